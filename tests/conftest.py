"""Test-wide setup: 8 simulated CPU devices, so sharding code runs as on a pod slice."""
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
  """`train.py --config=configs/demo.py` run once (shortened): (workdir, the process)."""
  workdir = str(tmp_path_factory.mktemp("demo"))
  done = subprocess.run(
      [sys.executable, "train.py", "--config=configs/demo.py", f"--workdir={workdir}",
       f"--config.total_steps={DEMO_STEPS}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  return workdir, done
