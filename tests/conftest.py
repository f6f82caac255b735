"""Test-wide setup: 8 simulated CPU devices, so sharding code runs as on a pod slice."""
import fcntl
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

# Must happen before any JAX backend is created; every test sees 8 CPU devices.
jax.config.update("jax_num_cpu_devices", 8)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_STEPS = 300


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  """`train.py --config=configs/demo.py` run once (shortened): (workdir, the process).

  Once for the whole test run, not once per xdist worker: the first worker to get here runs
  it under a lock in the workers' shared temporary folder; the others read its record. The
  tests only read the workdir.
  """
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # Each worker's basetemp is in the run's folder.
    shared = shared.parent
  workdir, record = shared / "demo", shared / "demo.json"
  with open(shared / "demo.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not record.exists():
      done = subprocess.run(
          [sys.executable, "train.py", "--config=configs/demo.py", f"--workdir={workdir}",
           f"--config.total_steps={DEMO_STEPS}"],
          cwd=ROOT, capture_output=True, text=True, timeout=900)
      record.write_text(json.dumps({"args": done.args, "returncode": done.returncode,
                                    "stdout": done.stdout, "stderr": done.stderr}))
    done = subprocess.CompletedProcess(**json.loads(record.read_text()))
  return str(workdir), done
