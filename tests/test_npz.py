"""Official .npz in and out, and logits that agree with an independent reader of the file."""
import os
import socket
import stat
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_jax import models, npz
from bit_jax.errors import UserError
from tests import reference_bit_numpy as ref
from tests.official_layout import make_official_weights

IMAGES = np.random.default_rng(0).uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)


def _rel_err(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / np.max(np.abs(theirs)))


def test_round_trip_keeps_every_array(tmp_path):
  model = models.get_model("tiny-R14", num_classes=4)
  params = jax.jit(model.init)(jax.random.key(0), IMAGES[:1])["params"]
  npz.save(params, tmp_path / "mine.npz")
  loaded = npz.load(tmp_path / "mine.npz")
  assert jax.tree.structure(loaded) == jax.tree.structure(jax.tree.map(np.asarray, params))
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def test_saved_file_uses_the_official_key_list(tmp_path):
  model = models.get_model("tiny-R14", num_classes=10)
  params = jax.jit(model.init)(jax.random.key(0), IMAGES[:1])["params"]
  npz.save(params, tmp_path / "mine.npz")
  official = make_official_weights()  # tiny-R14's shapes, built from the format alone.
  with np.load(tmp_path / "mine.npz") as saved:
    assert {k: saved[k].shape for k in saved.files} == {k: v.shape for k, v in official.items()}


def test_official_file_loads_into_the_model_tree(tmp_path):
  np.savez(tmp_path / "official.npz", **make_official_weights())
  params = npz.load(tmp_path / "official.npz")
  model = models.get_model("tiny-R14", num_classes=10)
  expected = jax.jit(model.init)(jax.random.key(0), IMAGES[:1])["params"]
  assert jax.tree.structure(params) == jax.tree.structure(expected)


def test_numbered_conv_names_are_accepted(tmp_path):
  np.savez(tmp_path / "numbered.npz", **make_official_weights(conv_name="standardized_conv2d_3"))
  params = npz.load(tmp_path / "numbered.npz")
  assert params["block1"]["unit01"]["conv_proj"]["kernel"].shape == (
      1, 1, 32, 128)


def test_logits_from_an_official_file_agree_with_the_reference(tmp_path):
  """Load theirs: a file in the official layout, read by us and by the numpy reference."""
  weights = make_official_weights(seed=7, units=(2, 1, 2, 1), num_classes=6)
  np.savez(tmp_path / "theirs.npz", **weights)
  model = models.get_model("tiny-R14", num_classes=6).clone(
      architecture=models.Architecture((2, 1, 2, 1), 1, base_width=32))
  logits, out = model.apply({"params": npz.load(tmp_path / "theirs.npz")}, IMAGES)
  ref_logits, ref_pre = ref.forward(weights, IMAGES)
  assert _rel_err(logits, ref_logits) < 5e-4
  assert _rel_err(out["pre_logits"], ref_pre) < 5e-4


def test_logits_of_a_saved_model_agree_with_the_reference(tmp_path):
  """Save ours: the reference reads our file and computes the same logits."""
  model = models.get_model("tiny-R26", num_classes=5)
  params = jax.jit(model.init)(jax.random.key(3), IMAGES[:1])["params"]
  # A non-zero head, so the comparison covers the head too.
  params["head"]["kernel"] = jax.random.normal(
      jax.random.key(4), params["head"]["kernel"].shape)
  params["head"]["bias"] = jnp.arange(5.0)
  npz.save(params, tmp_path / "ours.npz")
  with np.load(tmp_path / "ours.npz") as f:
    weights = {k: f[k] for k in f.files}
  logits, _ = model.apply({"params": params}, IMAGES)
  ref_logits, _ = ref.forward(weights, IMAGES)
  assert _rel_err(logits, ref_logits) < 5e-4


def test_save_replaces_an_existing_file_only_when_complete(tmp_path, monkeypatch):
  path = tmp_path / "keep.npz"
  npz.save({"a": np.ones(3)}, path)
  before = path.read_bytes()

  def failing_savez(f, **arrays):
    f.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(np, "savez", failing_savez)
  with pytest.raises(OSError, match="disk full"):
    npz.save({"a": np.zeros(3)}, path)
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["keep.npz"]  # No temporary file left behind.


def _npy(path):
  with path.open("wb") as f:
    np.save(f, np.ones(3))


def _truncated_npz(path):
  np.savez(path, **make_official_weights())
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("setup,message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"not a zip"),
     "is not a zip/.npz file .*; expected an official BiT .npz such as BiT-M-R50x1.npz"),
    (lambda p: p.write_text("resnet/a/kernel 1.0 2.0\n"), "is not a zip/.npz file"),  # Renamed.
    (lambda p: p.write_bytes(b""), "is not a zip/.npz file"),
    (_truncated_npz, "is not a zip/.npz file"),
    (_npy, "is not a zip/.npz file"),
    (lambda p: np.savez(p, **{"resnet/a/kernel": np.ones(2), "resnet/b/kernel": [1, np.nan],
                              "resnet/c/kernel": [np.inf]}),
     "holds NaN or Inf in 'resnet/b/kernel'; expected finite parameters"),
    (lambda p: np.savez(p, **{"resnet/a/kernel": np.full((2, 2), -np.inf, np.float16)}),
     "holds NaN or Inf in 'resnet/a/kernel'"),
    (lambda p: np.savez(p, **{"block1/kernel": np.ones(1)}), "keys outside 'resnet/'"),
    (lambda p: np.savez(p, **{"resnet/a/standardized_conv2d/kernel": np.ones(1),
                              "resnet/a/standardized_conv2d_1/kernel": np.ones(1)}),
     "two arrays for 'a/standardized_conv2d/kernel'"),
    (lambda p: np.savez(p), "no arrays"),
])
def test_unreadable_files_give_one_clear_line(tmp_path, setup, message):
  path = tmp_path / "bad.npz"
  setup(path)
  with pytest.raises(UserError, match=message) as error:
    npz.load(path)
  assert "\n" not in str(error.value)


def test_save_removes_what_a_killed_save_left_and_follows_the_umask(tmp_path):
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()  # A writer that is gone: its temporary file is an orphan.
  orphan = tmp_path / f".keep.npz.{socket.gethostname()}.{child.pid}.1234abcd.tmp"
  orphan.write_bytes(b"PK half an archive")
  old = os.umask(0o027)
  try:
    npz.save({"a": np.ones(3)}, tmp_path / "keep.npz")
  finally:
    os.umask(old)
  assert os.listdir(tmp_path) == ["keep.npz"]
  assert stat.S_IMODE((tmp_path / "keep.npz").stat().st_mode) == 0o640
