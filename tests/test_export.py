"""Exporting a training checkpoint to the official .npz, and a fine-tuned run to a SavedModel."""
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

import input_pipeline
from bit_jax import checkpointing, export, finetune, models, npz, run_dir, train_step
from bit_jax.errors import UserError

CLASSES = ("cow", "horse", "sheep")
CROP = 32


def _checkpoint(workdir, steps):
  model = models.get_model("tiny-R14", num_classes=3)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
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
  bad = subprocess.run([sys.executable, "-m", "bit_jax.export", f"--model_dir={tmp_path}",
                        "--format=savedmodel"], capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2, bad.stderr[-2000:]
  assert bad.stderr.strip().splitlines()[-1].startswith(
      f"error: {tmp_path} is not a fine-tuning run directory")


def _run_dir(directory, pp_image=None):
  """A fine-tuned tiny model's run directory, with a head that gives logits of order 1."""
  model = models.get_model("tiny-R14", num_classes=len(CLASSES), kernels="plain")
  params = finetune.init_params(model, jax.random.key(0), CROP)
  kernel, bias = jax.random.normal(jax.random.key(1), (2, params["head"]["kernel"].shape[0],
                                                       len(CLASSES)))
  params["head"] = {"kernel": kernel, "bias": bias[0]}
  card = run_dir.ModelCard(model="tiny-R14", class_names=CLASSES, resize=CROP + 8, crop=CROP,
                           pp_image=pp_image or run_dir.pp_image(CROP),
                           provenance={"dataset": "test"})
  run_dir.write(directory, params, card)
  return str(directory)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(run dir, its SavedModel's path), exported once for the module."""
  model_dir = _run_dir(tmp_path_factory.mktemp("run"))
  return model_dir, export.export_from_flags(model_dir=model_dir, fmt="savedmodel")


def _our_logits(model_dir, batches):
  """The logits our own pipeline gives each batch: input_pipeline's eval preprocessing of
  each image in tf.data, then model.apply."""
  model, params, card = run_dir.load(model_dir)
  pp = input_pipeline.get_preprocess_fn(card.pp_image)
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
  return [np.asarray(apply(params, np.stack([
      example["image"] for example in tf.data.Dataset.from_tensor_slices(
          {"image": images}).map(pp).as_numpy_iterator()]))) for images in batches]


def test_savedmodel_takes_uint8_images_of_any_size_and_matches_our_logits(exported):
  model_dir, path = exported
  assert path == os.path.join(model_dir, "saved_model")
  loaded = tf.saved_model.load(path)
  serve = loaded.signatures["serving_default"]
  spec = serve.structured_input_signature[1]["images"]
  assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 256, shape, dtype=np.uint8)
             for shape in [(2, 20, 45, 3), (2, 64, 48, 3)]]
  for images, ours in zip(batches, _our_logits(model_dir, batches)):
    out = serve(images=tf.constant(images))
    assert np.abs(ours).max() > 0.1  # A zero head would match anything.
    # TensorFlow compiles the exported module itself (its XLA, its flags): measured 6.7e-5
    # at logits up to 43, 0.015 of this tolerance.
    np.testing.assert_allclose(out["logits"].numpy(), ours, rtol=1e-4,
                               atol=1e-4 * np.abs(ours).max())
    # Probabilities <= 1 from one float32 softmax in TF and one in JAX: a few ulps of 1
    # (1.2e-7 each; measured equal).
    np.testing.assert_allclose(out["probabilities"].numpy(),
                               np.asarray(jax.nn.softmax(out["logits"].numpy())), atol=1e-6)
  names = loaded.signatures["class_names"]()["class_names"].numpy()
  assert [n.decode() for n in names] == list(CLASSES)
  with open(os.path.join(path, "assets.extra", "class_names.txt")) as f:
    assert f.read().splitlines() == list(CLASSES)
  assert run_dir.read_card(os.path.join(path, "assets.extra")).class_names == CLASSES


def test_savedmodel_export_leaves_absl_logging_as_it_was(exported, tmp_path):
  """tf.saved_model.save sets absl's verbosity to FATAL and back, which left absl's logger at
  WARNING: whatever ran after an export in the same process lost absl's INFO lines."""
  model_dir, _ = exported
  logger = absl_logging.get_absl_logger()
  before = logger.level
  logger.setLevel(logging.NOTSET)  # As a fresh process has it.
  try:
    export.export_from_flags(model_dir=model_dir, fmt="savedmodel", out=str(tmp_path / "m"))
    assert logger.level == logging.NOTSET
  finally:
    logger.setLevel(before)


def test_savedmodel_is_written_whole_or_not_at_all(exported, tmp_path, monkeypatch):
  model_dir, earlier = exported
  out = tmp_path / "model"
  shutil.copytree(earlier, out)
  (out / "mark").write_text("the earlier export")
  killed = subprocess.Popen([sys.executable, "-c", "pass"])
  killed.wait()  # What it left half written is an orphan now.
  orphan = tmp_path / f".model.{socket.gethostname()}.{killed.pid}.00c0ffee.tmp"
  (orphan / "variables").mkdir(parents=True)

  real_save = tf.saved_model.save
  def interrupted_save(module, directory, **kwargs):
    real_save(module, directory, **kwargs)
    raise KeyboardInterrupt  # After the files are there, before the rename.
  monkeypatch.setattr(tf.saved_model, "save", interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    export.export_savedmodel(model_dir, str(out))
  # The earlier export is whole; neither the half export nor the orphan is left.
  assert os.listdir(tmp_path) == ["model"] and (out / "mark").is_file()

  monkeypatch.setattr(tf.saved_model, "save", real_save)
  assert export.export_savedmodel(model_dir, str(out)) == str(out)  # Replaces it whole.
  assert os.listdir(tmp_path) == ["model"]
  assert "mark" not in os.listdir(out) and (out / "saved_model.pb").is_file()


def test_bad_savedmodel_exports_are_one_clear_line(exported, tmp_path):
  model_dir, _ = exported
  with pytest.raises(UserError, match=r"unknown --format=onnx; valid: npz, savedmodel"):
    export.export_from_flags(model_dir=model_dir, fmt="onnx")
  with pytest.raises(UserError, match="is not a fine-tuning run directory"):
    export.export_from_flags(model_dir=str(tmp_path), fmt="savedmodel")
  with pytest.raises(UserError, match="params.npz already is the official .npz"):
    export.export_from_flags(model_dir=model_dir)
  with pytest.raises(UserError, match="exactly one of --workdir .* and --model_dir"):
    export.export_from_flags(workdir=str(tmp_path), model_dir=model_dir)
  with pytest.raises(UserError, match="--format=savedmodel needs --model_dir"):
    export.export_from_flags(workdir=str(tmp_path), fmt="savedmodel")
  with pytest.raises(UserError, match="--step is for --workdir"):
    export.export_from_flags(model_dir=model_dir, fmt="savedmodel", step=3)
  (tmp_path / "file").write_text("mine")
  (tmp_path / "folder").mkdir()
  (tmp_path / "folder" / "notes.txt").write_text("mine")
  for taken in (tmp_path / "file", tmp_path / "folder"):
    with pytest.raises(UserError, match=f"--out={taken} exists and is not a SavedModel"):
      export.export_from_flags(model_dir=model_dir, fmt="savedmodel", out=str(taken))
  assert os.listdir(tmp_path / "folder") == ["notes.txt"]
  random_pp = _run_dir(tmp_path / "random", f"decode|flip_lr|resize({CROP})|value_range(-1,1)")
  with pytest.raises(UserError, match="cannot export the preprocessing .*flip_lr.* only the "
                                      "ops decode, to_rgb, resize, value_range"):
    export.export_savedmodel(random_pp)
  wrong_size = _run_dir(tmp_path / "small", "decode|resize(16)|value_range(-1,1)")
  with pytest.raises(UserError, match=r"makes float32 \(None, 16, 16, 3\) images; the model "
                                      r"takes float32 \[None, 32, 32, 3\]"):
    export.export_savedmodel(wrong_size)
  assert not os.path.exists(os.path.join(wrong_size, "saved_model"))
