"""Export a model to where others use it: a training checkpoint to the official BiT .npz, a
fine-tuned run to a TensorFlow SavedModel.

    python -m bit_jax.export --workdir=DIR [--step=N] [--out=FILE]
    python -m bit_jax.export --model_dir=RUN_DIR --format=savedmodel [--out=DIR]

`--workdir` (format `npz`, the default) reads `<workdir>/checkpoints/<step>` (the latest by
default) and writes its parameters in the layout every BiT loader reads (`bit_jax.npz`).
Training does this for its last step. The file is written atomically, with the umask's mode:
an interrupted export leaves any earlier file whole, and its temporary file is removed by the
next one (`bit_jax.atomic_files`). A run directory (`bit_jax.run_dir`) needs no .npz export:
its params.npz is one already, so `--model_dir` with `--format=npz` is refused, naming it.

`--model_dir --format=savedmodel` writes `<run dir>/saved_model` (or `--out`) for TF Serving:

    serving_default(images: uint8 [batch, height, width, 3], any size)
        -> logits, probabilities: float32 [batch, classes]
    class_names() -> class_names: string [classes]
    assets.extra/class_names.txt (one a line, index order), assets.extra/model.json (the card)

It applies the card's eval preprocessing (`ModelCard.pp_image`, e.g. `decode|resize(384)|
value_range(-1,1)`) in TensorFlow with the very ops `input_pipeline` runs, to the whole batch,
then the model: its plain kernels with the weight standardization done once, here
(`models.for_inference`), converted by `jax.experimental.jax2tf` to one StableHLO module
(an `XlaCallModule` op) lowered for CPU, CUDA and TPU, with the parameters as variables.
TF Lite cannot convert `XlaCallModule`; TF Serving and `tf.saved_model.load` run it within
`jax.export`'s compatibility window: TensorFlow up to 6 months newer than the jax that wrote
it, or up to 1 month older. The directory is written under a
temporary name and renamed, so an interrupted export never leaves half a SavedModel under the
final name; an earlier export there is replaced.
"""

from __future__ import annotations

import os
import re
import shutil

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from bit_jax import atomic_files, checkpointing, entry, models, npz, run_dir
from bit_jax.errors import UserError

FORMATS = ("npz", "savedmodel")
SAVEDMODEL_NAME = "saved_model"  # <run dir>/saved_model: the default --out of a SavedModel.
# Platforms the SavedModel's StableHLO is lowered for: it runs on any of them, and only those.
PLATFORMS = ("cpu", "cuda", "tpu")
# Preprocessing ops that act on a batch [b, h, w, c] exactly as on each of its images, so the
# export runs them once per batch; the HyperRule's eval preprocessing uses only these.
BATCH_OPS = ("decode", "to_rgb", "resize", "value_range")


def export(workdir: str, out: str | None = None, step: int | None = None) -> str:
  """Writes checkpoint `step` (default: latest) of `workdir` as .npz; returns its path."""
  params, step = checkpointing.read_params(workdir, step)
  out = out or os.path.join(workdir, f"params_step{step}.npz")
  npz.save(params, out)
  return out


def export_savedmodel(model_dir: str, out: str | None = None, *,
                      platforms: tuple[str, ...] = PLATFORMS) -> str:
  """Writes the run in `model_dir` as a SavedModel (see the module docstring); returns its
  path, by default `<model_dir>/saved_model`. An existing SavedModel there is replaced."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # Only this format needs TF.
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  import input_pipeline  # pylint: disable=import-outside-toplevel

  model, params, card = run_dir.load(model_dir, kernels="plain")
  out = os.path.abspath(out or os.path.join(model_dir, SAVEDMODEL_NAME))
  if os.path.lexists(out) and not os.path.isfile(os.path.join(out, "saved_model.pb")):
    raise UserError(f"--out={out} exists and is not a SavedModel; give a new path, or an "
                    "earlier export to replace")
  try:
    preprocess = input_pipeline.get_preprocess_fn(_batch_pp(card))
  except input_pipeline.InputError as e:
    raise UserError(f"{model_dir}/{run_dir.CARD_NAME}: pp_image: {e}") from None
  model, params = models.for_inference(model, params)

  def logits_fn(params, images):
    return model.apply({"params": params}, images)[0]

  module = tf.Module()
  module.params = jax.tree.map(lambda p: tf.Variable(np.asarray(p), trainable=False), params)
  # "b": the batch size is left open; height and width are the crop's.
  module.logits = jax2tf.convert(logits_fn, polymorphic_shapes=[None, "(b, ...)"],
                                 with_gradient=False,
                                 native_serialization_platforms=platforms)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  def serve(images):
    inputs = preprocess({"image": images})["image"]
    want = [None, card.crop, card.crop, 3]
    if inputs.dtype != tf.float32 or inputs.shape.as_list() != want:
      raise UserError(f"{model_dir}'s pp_image {card.pp_image!r} makes {inputs.dtype.name} "
                      f"{inputs.shape} images; the model takes float32 {want}")
    logits = module.logits(module.params, inputs)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

  @tf.function(autograph=False, input_signature=[])
  def class_names():
    return {"class_names": tf.constant(card.class_names, tf.string)}

  module.serve, module.class_names = serve, class_names
  signatures = {"serving_default": serve.get_concrete_function(),
                "class_names": class_names.get_concrete_function()}

  def write_to(directory: str) -> None:
    # tf.saved_model.save sets absl's verbosity to FATAL and back, which leaves absl's logger
    # at WARNING: a notebook that exports would lose training's INFO lines after it.
    absl_logger = absl_logging.get_absl_logger()
    level = absl_logger.level
    try:
      tf.saved_model.save(module, directory, signatures=signatures)
    finally:
      absl_logger.setLevel(level)
    extra = os.path.join(directory, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, "class_names.txt"), "w", encoding="utf-8") as f:
      f.writelines(f"{name}\n" for name in card.class_names)
    shutil.copyfile(os.path.join(model_dir, run_dir.CARD_NAME),
                    os.path.join(extra, run_dir.CARD_NAME))

  atomic_files.write_directory(out, write_to)
  return out


def _batch_pp(card: run_dir.ModelCard) -> str:
  """The card's `pp_image`, checked to act on a batch as on each of its images."""
  names = [re.match(r"\s*(\w*)", spec).group(1) for spec in card.pp_image.split("|")
           if spec.strip()]
  if not names or any(name not in BATCH_OPS for name in names):
    raise UserError(f"cannot export the preprocessing {card.pp_image!r} of model.json: a "
                    f"SavedModel applies only the ops {', '.join(BATCH_OPS)}")
  return card.pp_image


def export_from_flags(*, workdir: str | None = None, model_dir: str | None = None,
                      fmt: str = "npz", out: str | None = None, step: int | None = None
                      ) -> str:
  """What the command line does: checks the flags' combination and exports; returns the path."""
  if fmt not in FORMATS:
    raise UserError(f"unknown --format={fmt}; valid: {', '.join(FORMATS)}")
  if (workdir is None) == (model_dir is None):
    raise UserError("give exactly one of --workdir (a train.py run, exported as npz) and "
                    "--model_dir (a fine-tuning run directory)")
  if workdir is not None:
    if fmt != "npz":
      raise UserError(f"--format={fmt} needs --model_dir, a fine-tuning run directory "
                      "with model.json; a train.py workdir exports only as npz")
    return export(workdir, out, step)
  if step is not None:
    raise UserError("--step is for --workdir; a run directory holds one set of parameters")
  if fmt == "npz":
    run_dir.read_card(model_dir)  # Not a run directory: say that first.
    raise UserError(f"{os.path.join(model_dir, run_dir.PARAMS_NAME)} already is the official "
                    ".npz; copy it, or give --format=savedmodel")
  return export_savedmodel(model_dir, out)


def main(argv):
  del argv
  f = flags.FLAGS
  entry.run(lambda: print(export_from_flags(workdir=f.workdir, model_dir=f.model_dir,
                                            fmt=f.format, out=f.out, step=f.step)))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A train.py workdir: its checkpoint becomes an .npz.")
  flags.DEFINE_string("model_dir", None, "A fine-tuning run directory (params.npz + model.json).")
  flags.DEFINE_string("format", "npz", f"One of: {', '.join(FORMATS)}.")
  flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step; default: the latest.")
  flags.DEFINE_string("out", None, "Output; default: <workdir>/params_step<N>.npz, or "
                      f"<model_dir>/{SAVEDMODEL_NAME}.")
  entry.prepare()
  app.run(main)
