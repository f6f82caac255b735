"""Exporting a training checkpoint to the official .npz."""
import os
import socket
import stat
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bit_jax import checkpointing, export, models, npz, train_step
from bit_jax.errors import UserError


def _checkpoint(workdir, steps):
  model = models.get_model("tiny-R14", num_classes=3)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  checkpointer = checkpointing.Checkpointer(str(workdir / "checkpoints"), keep=5)
  states = {}
  for step in steps:
    params = jax.tree.map(lambda x: x + 1.0, params)
    states[step] = train_step.create_train_state(params, optax.sgd(0.1, momentum=0.9))
    checkpointer.save(step, states[step])
  checkpointer.wait()
  checkpointer.close()
  return states


def test_latest_and_chosen_steps_export_their_parameters(tmp_path):
  states = _checkpoint(tmp_path, [5, 10])
  latest = export.export(str(tmp_path))
  assert latest.endswith("params_step10.npz")
  jax.tree.map(np.testing.assert_array_equal, npz.load(latest),
               jax.tree.map(np.asarray, states[10].params))
  chosen = export.export(str(tmp_path), out=str(tmp_path / "five.npz"), step=5)
  np.testing.assert_array_equal(npz.load(chosen)["head"]["bias"],
                                np.asarray(states[5].params["head"]["bias"]))


def test_a_rerun_cleans_up_after_a_killed_export_and_the_umask_sets_the_mode(tmp_path):
  _checkpoint(tmp_path, [4])
  killed = subprocess.Popen([sys.executable, "-c", "pass"])
  killed.wait()  # Its half-written export is an orphan now.
  orphan = tmp_path / f".params_step4.npz.{socket.gethostname()}.{killed.pid}.00c0ffee.tmp"
  orphan.write_bytes(b"PK\x03\x04 half")
  old = os.umask(0o022)
  try:
    out = export.export(str(tmp_path))
  finally:
    os.umask(old)
  assert sorted(os.listdir(tmp_path)) == ["checkpoints", "params_step4.npz"]
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o644


def test_missing_step_or_workdir_is_one_clear_line(tmp_path):
  _checkpoint(tmp_path, [5])
  with pytest.raises(UserError, match="no checkpoint for step 7 .*valid steps: 5"):
    export.export(str(tmp_path), step=7)
  with pytest.raises(UserError, match="expected the workdir of a train.py run"):
    export.export(str(tmp_path / "nowhere"))


def test_command_line(tmp_path):
  _checkpoint(tmp_path, [3])
  done = subprocess.run([sys.executable, "-m", "bit_jax.export", f"--workdir={tmp_path}"],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().endswith("params_step3.npz")
  bad = subprocess.run([sys.executable, "-m", "bit_jax.export", f"--workdir={tmp_path}/x"],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
