"""Two JAX processes on localhost train exactly as one process does, and stop together.

Each process (tests/multihost_worker.py) joins `jax.distributed` with 2 CPU devices and gloo
collectives; the global batch is sharded over all 4 devices, each process feeding only its
own rows, with gradient accumulation on. The final parameters must equal a single-process
run of the same global batches, and both processes must hold the same replicated state. One
more step with `sharding=fsdp` (state leaves split across the processes) must equal it too.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from bit_jax import entry
from tests import multihost_worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
NUM_PROCESSES = 2
LOCAL_DEVICES = 2
TIMEOUT_S = 120  # For both processes; each takes ~20 s of CPU, more on a busy machine.


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_processes(tmp_path):
  port = _free_port()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  outs = [tmp_path / f"process{i}.npz" for i in range(NUM_PROCESSES)]
  procs = [subprocess.Popen(
      [sys.executable, WORKER, str(i), str(NUM_PROCESSES), str(port), str(LOCAL_DEVICES),
       str(outs[i])], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(NUM_PROCESSES)]
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


def _wait(procs, outs):
  _finish(procs)
  return [dict(np.load(out)) for out in outs]


def test_two_processes_train_like_one(tmp_path):
  procs, outs = _start_processes(tmp_path)
  try:
    # The reference, while the two processes run: one process, the same global batches,
    # on one device.
    initial, flat, losses, split = multihost_worker.train(jax.devices()[:1])
    _, fsdp_flat, fsdp_losses, _ = multihost_worker.train(jax.devices()[:1], "fsdp", steps=1)
  finally:
    results = _wait(procs, outs)
  for r in results:
    assert int(r["process_count"]) == NUM_PROCESSES
    assert int(r["device_count"]) == NUM_PROCESSES * LOCAL_DEVICES
    # A SIGTERM that reached process 1 alone stops both (at the same step), no SIGTERM none.
    assert r["stop_votes"].tolist() == [True, False]

  assert len(flat) > 10 and np.all(np.isfinite(losses))
  for r in results:
    np.testing.assert_allclose(r["losses"], losses, rtol=1e-5)
    for key, value in flat.items():
      np.testing.assert_allclose(r[f"params/{key}"], value, rtol=1e-4, atol=1e-6,
                                 err_msg=key)
  # Both processes hold bit-identical replicas of the state.
  for key in flat:
    np.testing.assert_array_equal(results[0][f"params/{key}"], results[1][f"params/{key}"])
  # Training moved the parameters, the backbone's included (a test that cannot fail is a
  # defect).
  moved = [k for k in flat if not np.allclose(flat[k], initial[k])]
  assert "block1/unit01/conv1/kernel" in moved
  assert split == 0

  # fsdp: the large leaves (and their momentum) are split across the two processes, and the
  # step equals one process's.
  for r in results:
    assert int(r["fsdp_split"]) > 10
    np.testing.assert_allclose(r["fsdp_losses"], fsdp_losses, rtol=1e-5)
    for key, value in fsdp_flat.items():
      np.testing.assert_allclose(r[f"fsdp/{key}"], value, rtol=1e-4, atol=1e-6, err_msg=key)
  for key in fsdp_flat:
    np.testing.assert_array_equal(results[0][f"fsdp/{key}"], results[1][f"fsdp/{key}"])
  assert not np.allclose(fsdp_flat["block1/unit01/conv1/kernel"],
                         initial["block1/unit01/conv1/kernel"])


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
  logs = _finish(procs, timeout_s=3 * TIMEOUT_S, status=entry.EXIT_PREEMPTED)
  # SIGTERM during step 3 of process 1; the hosts compare flags at steps 2, 4, ...: both
  # stop after step 4, the one checkpoint is step 4, and nothing is exported.
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]
  for log in logs:
    assert "SIGTERM received: saved step 4" in log
  assert not os.path.exists(os.path.join(workdir, "params.npz"))
