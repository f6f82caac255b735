"""Test-wide setup: 8 simulated CPU devices, so sharding code runs as on a pod slice."""
import fcntl
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One BLAS thread per process (read when numpy loads, so before it does; inherited by the
# subprocesses tests start): the tests' matrices are small, and two xdist workers already
# fill the two cores, so more BLAS threads only slow sklearn's small probes (linear_eval).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Most tests compile more than they run (tiny models, a few steps), and XLA:CPU compiles
# faster without LLVM's optimizations and with its older fusion emitters. Both change only
# the rounding (test_train_step's hoisting test sees it). Read when the backend starts, and
# inherited by the processes tests start; the long runs (the demo's pretraining and
# transfer, several times slower unoptimized) take `optimized_env`, the compiler users run.
COMPILE_FAST = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *COMPILE_FAST]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Must happen before any JAX backend is created; every test sees 8 CPU devices.
jax.config.update("jax_num_cpu_devices", 8)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_STEPS = 300

def _shared_folder(tmp_path_factory):
  """The test run's temporary folder, shared by its xdist workers (each has its own below)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the test run, its workers and subprocesses.

  Many tests compile the same tiny programs (tiny-R14's train step, the demo's evaluators),
  often in fresh processes (train.py, transfer.py); each compiles once per test run. An
  executable read from the cache is the one compiled, so bitwise comparisons still hold.
  """
  cache = str(_shared_folder(tmp_path_factory) / "jax_cache")
  settings = {"jax_compilation_cache_dir": cache,
              "jax_persistent_cache_min_compile_time_secs": 0.2}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)  # Inherited by the subprocesses tests start.
  yield cache


def _optimized_env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env["XLA_FLAGS"].split() if f not in COMPILE_FAST)
  return env


@pytest.fixture
def optimized_env():
  """The environment for a process that runs long enough for XLA's optimizations to pay."""
  return _optimized_env()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  """`train.py --config=configs/demo.py` run once (shortened): (workdir, the process).

  Once for the whole test run, not once per xdist worker: the first worker to get here runs
  it under a lock in the workers' shared temporary folder; the others read its record. The
  tests only read the workdir.
  """
  shared = _shared_folder(tmp_path_factory)
  workdir, record = shared / "demo", shared / "demo.json"
  with open(shared / "demo.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not record.exists():
      done = subprocess.run(
          [sys.executable, "train.py", "--config=configs/demo.py", f"--workdir={workdir}",
           f"--config.total_steps={DEMO_STEPS}"],
          cwd=ROOT, env=_optimized_env(), capture_output=True, text=True, timeout=900)
      record.write_text(json.dumps({"args": done.args, "returncode": done.returncode,
                                    "stdout": done.stdout, "stderr": done.stderr}))
    done = subprocess.CompletedProcess(**json.loads(record.read_text()))
  return str(workdir), done
