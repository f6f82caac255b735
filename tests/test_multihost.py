"""Two JAX processes on localhost train exactly as one process does, and stop together.

Each process (tests/multihost_worker.py) joins `jax.distributed` with gloo collectives; the
global batch is sharded over one device of each, each process feeding only its own rows,
with gradient accumulation on. The final parameters must equal, bit for bit, those of a
one-process run of the same global batches over two devices (the same compiled program:
multihost_worker.py says why the two run it the same way), and both processes must hold the
same replicated state. One more step with `sharding=fsdp` (state leaves split across the
processes) must equal the reference's too.
"""
import os
import socket
import subprocess
import sys

import numpy as np

from bit_jax import entry
from tests import multihost_worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
NUM_PROCESSES = 2
# Far above what the processes need on 2 busy cores: only a hang (a process waiting on a
# collective forever) comes near this.
TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_processes(tmp_path):
  """The joined processes and, beside them, the one-process reference (the last)."""
  port = _free_port()
  # The tests' XLA_FLAGS (tests/conftest.py) travel in os.environ: one compiler for all.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  outs = [tmp_path / f"process{i}.npz" for i in range(NUM_PROCESSES)] + [tmp_path / "one.npz"]
  args = [[str(i), str(NUM_PROCESSES), str(port)] for i in range(NUM_PROCESSES)] + [[]]
  procs = [subprocess.Popen([sys.executable, WORKER, str(out), *a], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for out, a in zip(outs, args)]
  return procs, outs


def _finish(procs, timeout_s=TIMEOUT_S, status=0) -> list[str]:
  """Each process's output, once all have exited; fails if one exits with another status."""
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=timeout_s)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, p in enumerate(procs):
    assert p.returncode == status, f"process {i} failed:\n{logs[i][-3000:]}"
  return logs


def test_two_processes_train_like_one(tmp_path):
  procs, outs = _start_processes(tmp_path)
  _finish(procs)
  *results, one = [dict(np.load(out)) for out in outs]
  keys = sorted(k.removeprefix("params/") for k in one if k.startswith("params/"))
  fsdp_keys = sorted(k.removeprefix("fsdp/") for k in one if k.startswith("fsdp/"))
  assert int(one["process_count"]) == 1 and int(one["split"]) == 0
  for r in results:
    assert int(r["process_count"]) == NUM_PROCESSES
    assert int(r["device_count"]) == NUM_PROCESSES * multihost_worker.LOCAL_DEVICES
    assert int(r["split"]) == 0  # Replicated: every process holds the whole state.
    # A SIGTERM that reached process 1 alone stops both (at the same step), no SIGTERM none.
    assert r["stop_votes"].tolist() == [True, False]

  assert len(keys) > 10 and np.all(np.isfinite(one["losses"]))
  for r in results:
    np.testing.assert_array_equal(r["losses"], one["losses"])
    for key in keys:
      np.testing.assert_array_equal(r[f"params/{key}"], one[f"params/{key}"], err_msg=key)
  # Training moved the parameters, the backbone's included (a test that cannot fail is a
  # defect).
  key = "block1/unit01/conv1/kernel"
  assert not np.allclose(one[f"params/{key}"], one[f"initial/{key}"])

  # fsdp: the large leaves (and their momentum) are split across the two processes, and the
  # step equals one process's.
  assert int(one["fsdp_split"]) == 0 and len(fsdp_keys) == len(keys)
  for r in results:
    assert int(r["fsdp_split"]) > 10
    np.testing.assert_array_equal(r["fsdp_losses"], one["fsdp_losses"])
    for key in fsdp_keys:
      np.testing.assert_array_equal(r[f"fsdp/{key}"], one[f"fsdp/{key}"], err_msg=key)
  assert not np.allclose(one["fsdp/block1/unit01/conv1/kernel"],
                         one["initial/block1/unit01/conv1/kernel"])


# Each process runs the real training loop (`train.train_and_evaluate` on the demo data);
# process 1 alone gets SIGTERM while its third batch is drawn.
_PREEMPTED_PROCESS = """
import os, signal, sys
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import input_pipeline
from bit_jax import train
from configs import demo

process_id = {process_id}
original_iterator = input_pipeline.train_iterator

def iterator_that_is_preempted(*args, **kwargs):
  for i, batch in enumerate(original_iterator(*args, **kwargs), start=1):
    if process_id == 1 and i == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    yield batch

train.input_pipeline.train_iterator = iterator_that_is_preempted
config = demo.get_config()
config.update(dict(total_steps=1000, batch_size=16, shuffle_buffer=64, log_every_steps=1,
                   eval_every_steps=1000, checkpoint_every_steps=1000,
                   preemption_check_every_steps=2, coordinator_address="localhost:{port}",
                   num_processes=2, process_id=process_id))
train.train_and_evaluate(config, {workdir!r})
"""


def test_sigterm_on_one_host_stops_every_host_at_the_same_saved_step(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  port, workdir = _free_port(), str(tmp_path / "workdir")  # One workdir: a shared file system.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-c", _PREEMPTED_PROCESS.format(
          root=root, process_id=i, port=port, workdir=workdir)],
      cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(NUM_PROCESSES)]
  logs = _finish(procs, timeout_s=360, status=entry.EXIT_PREEMPTED)
  # SIGTERM during step 3 of process 1; the hosts compare flags at steps 2, 4, ...: both
  # stop after step 4, the one checkpoint is step 4, and nothing is exported.
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]
  for log in logs:
    assert "SIGTERM received: saved step 4" in log
  assert not os.path.exists(os.path.join(workdir, "params.npz"))
