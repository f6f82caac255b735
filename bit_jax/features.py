"""Frozen features of a model on a dataset: for your own probes, and for our linear evaluations.

    python -m bit_jax.features --init=BiT-M-R50x1 --dataset=cifar10 --split=test \
        [--outputs=pre_logits,block3] [--resolution=128] --output=feats.npz

`--init` is an official .npz, a `train.py` workdir or a release name (all read by
`checkpointing.load_init`, and need `--model` unless the release name is one), or a
fine-tuning run directory (`bit_jax.run_dir`, which names its model, resolution and eval
preprocessing). The .npz holds each requested entry of the model's `out` dict (`stem`,
`block1`..`block4`, `pre_logits`, and `logits` for a run directory), one row per example in
the split's order, and integer `labels` when the dataset has labels.

Images are resized straight to the crop and scaled to [-1, 1]: the HyperRule's evaluation
preprocessing (`run_dir.pp_image`), at `--resolution`, else the run's crop, else the
HyperRule's crop for the dataset's image size.

`extract` is the library function: `bit_jax.transfer`'s frozen-feature evaluations call it.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

import input_pipeline
from bit_jax import atomic_files, checkpointing, distributed, entry, hyperrule, models, run_dir
from bit_jax.errors import UserError
from input_pipeline import MASK
from input_pipeline.indexed import INDEX, Indexed

LABELS = "labels"
DEFAULT_BATCH_SIZE = 64  # Rounded up to a multiple of the devices (`batch_size_for`).


def output_names(model: models.ResNetV2) -> tuple[str, ...]:
  """The entries of `model`'s `out` dict, stem to logits."""
  blocks = [f"block{i + 1}" for i in range(len(model.architecture.units_per_block))]
  return ("stem", *blocks, "pre_logits", *(("logits",) if model.num_classes else ()))


@functools.partial(jax.jit, static_argnames=("model", "outputs"))
def forward(model: models.ResNetV2, params: Any, images: jax.Array,
            outputs: tuple[str, ...]) -> dict[str, jax.Array]:
  """The `outputs` of one batch: the program `extract` runs (and benchmarks/memory.py sizes)."""
  _, out = model.apply({"params": params}, images)
  return {name: out[name] for name in outputs}


def extract(model: models.ResNetV2, params: Any, source: str | input_pipeline.Source,
            split: str, pp: str, *, batch_size: int, mesh: jax.sharding.Mesh,
            outputs: Sequence[str] = ("pre_logits",), data_dir: str | None = None,
            progress: bool = False) -> dict[str, np.ndarray]:
  """{name: [n, ...]} for each of `outputs` over every example of `split`, in the split's
  order, plus `LABELS` (int [n]; a one-hot label becomes its argmax) when the pp keeps a
  `label`.

  The evaluation batches of `finetune.evaluate`: padded to `batch_size` and masked, sharded
  over `mesh`'s `data` axis, the weight standardization applied once for the whole pass.
  `progress` shows a progress bar (on process 0, when stderr is a terminal).
  """
  outputs = tuple(outputs)
  valid = output_names(model)
  unknown = [name for name in outputs if name not in valid]
  if unknown or not outputs:
    raise UserError(f"unknown model output {unknown[0] if unknown else ''!r}; valid: "
                    f"{', '.join(valid)}")
  if isinstance(source, str):
    source = input_pipeline.get_source(source, data_dir)
  batches = input_pipeline.eval_iterator(Indexed(source), split, pp, batch_size, mesh)
  model, params = models.for_inference(model, jax.device_put(params, NamedSharding(mesh, P())))
  # process_allgather: every host gets the whole batch, also when it spans several hosts.
  gather = lambda x: jax.tree.map(np.asarray, multihost_utils.process_allgather(x, tiled=True))
  chunks = []
  for batch in _progress(batches, progress):
    values = forward(model, params, batch["image"], outputs)
    if "label" in batch:
      values[LABELS] = batch["label"]
    values = gather({**values, INDEX: batch[INDEX], MASK: batch[MASK]})
    mask = values.pop(MASK).astype(bool)
    chunks.append({k: v[mask] for k, v in values.items()})
  if not chunks:
    raise UserError(f"split {split!r} of {source.name} has no examples")
  result = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  order = np.argsort(result.pop(INDEX), kind="stable")
  result = {k: v[order] for k, v in result.items()}
  if LABELS in result and result[LABELS].ndim == 2:
    result[LABELS] = result[LABELS].argmax(-1)
  if LABELS in result:
    result[LABELS] = result[LABELS].astype(np.int64)
  return result


def _progress(batches: input_pipeline.EvalBatches, show: bool):
  if not show or jax.process_index() != 0:
    return batches
  try:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:  # Optional: log every 100 batches instead.
    return _logged(batches)
  # disable=None: a bar on a terminal, nothing in a log file.
  return tqdm(batches, total=len(batches), unit="batch", file=sys.stderr, disable=None,
              leave=False)


def _logged(batches):
  for i, batch in enumerate(batches, 1):
    if i % 100 == 0 or i == len(batches):
      logging.info("batch %d of %d", i, len(batches))
    yield batch


def batch_size_for(mesh: jax.sharding.Mesh, batch_size: int | None = None) -> int:
  """`batch_size` (default `DEFAULT_BATCH_SIZE`) rounded up to a multiple of the mesh's
  devices: a run's eval batch of 250 still works on 8 devices (the tail is padded anyway)."""
  devices = mesh.devices.size
  return -(-(batch_size or DEFAULT_BATCH_SIZE) // devices) * devices


def load(init: str, model_name: str | None = None
         ) -> tuple[models.ResNetV2, Any, run_dir.ModelCard | None]:
  """(model, params, card) of a run directory, or (model without head, params, None) of
  anything `checkpointing.load_init` reads."""
  if os.path.isdir(init) and run_dir.is_run(init):
    return run_dir.load(init)
  release = os.path.basename(os.path.normpath(init)).removesuffix(".npz")
  if not os.path.exists(init) and release not in models.MODEL_NAMES:
    raise UserError(f"--init={init} does not exist; valid: a fine-tuning run directory, an "
                    "official .npz, a train.py workdir or a release name (e.g. BiT-M-R50x1)")
  if not model_name:
    if release not in models.MODEL_NAMES:
      raise UserError(f"--model is needed with --init={init} (only a run directory or a "
                      f"release name names its model); valid: {', '.join(models.MODEL_NAMES)}")
    model_name = release
  model = models.get_model(model_name)  # No head: features only.
  return model, checkpointing.load_init(init, model), None


def default_crop(source: input_pipeline.Source) -> int:
  """The HyperRule's crop for the dataset's image size, from the source's metadata."""
  shape = source.image_shape or (None, None)
  if None in shape[:2]:
    raise UserError(f"the image size of {source.name} is not in its metadata (variable-size "
                    "images or a folder); pass --resolution=CROP, e.g. 128 or 384")
  return hyperrule.get_resolution(tuple(shape[:2]))[1]


def features(init: str, dataset: str, split: str, output: str, *, model_name: str | None = None,
             outputs: Sequence[str] = ("pre_logits",), resolution: int | None = None,
             batch_size: int | None = None, data_dir: str | None = None,
             progress: bool = False) -> dict[str, np.ndarray]:
  """What `python -m bit_jax.features` does: extracts, writes `output`, returns the arrays."""
  model, params, card = load(init, model_name)
  source = input_pipeline.get_source(dataset, data_dir)
  if resolution is not None:
    if resolution < 1:
      raise UserError(f"--resolution must be a positive crop size in pixels; got {resolution}")
    pp = run_dir.pp_image(resolution)
  elif card is not None:
    pp = card.pp_image
  else:
    pp = run_dir.pp_image(default_crop(source))
  pp += "|keep('image', 'label')" if source.num_classes is not None else "|keep('image')"
  mesh = distributed.data_mesh()
  arrays = extract(model, params, source, split, pp, batch_size=batch_size_for(mesh, batch_size),
                   mesh=mesh, outputs=outputs, progress=progress)
  if jax.process_index() == 0:
    atomic_files.write(output, lambda f: np.savez(f, **arrays))
  logging.info("Wrote %s of %d examples to %s.", ", ".join(arrays), len(arrays[outputs[0]]),
               output)
  return arrays


def main(argv):
  f = flags.FLAGS

  def job():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments {' '.join(argv[1:])}; every option is a --flag")
    features(f.init, f.dataset, f.split, f.output, model_name=f.model, outputs=f.outputs,
             resolution=f.resolution, batch_size=f.batch_size, data_dir=f.data_dir,
             progress=True)
  entry.run(job)


if __name__ == "__main__":
  flags.DEFINE_string("init", None, "A run directory, official .npz, train.py workdir or "
                      "release name.", required=True)
  flags.DEFINE_string("model", None, "Model name (e.g. BiT-M-R50x1); needed for a .npz or "
                      "workdir.")
  flags.DEFINE_string("dataset", None, "TFDS name, embedded dataset or folder:/path.",
                      required=True)
  flags.DEFINE_string("split", None, "Split, e.g. test or train[:1000].", required=True)
  flags.DEFINE_list("outputs", ["pre_logits"], "Model outputs to write: stem, block1..block4, "
                    "pre_logits, logits (run directories only).")
  flags.DEFINE_integer("resolution", None, "Crop size; default: the run's, else the "
                       "HyperRule's for the dataset.")
  flags.DEFINE_integer("batch_size", None, "Global batch size; default 64, rounded up to a "
                       "multiple of the devices.")
  flags.DEFINE_string("data_dir", None, "TFDS data directory.")
  flags.DEFINE_string("output", None, "The .npz to write.", required=True)
  entry.prepare()
  app.run(main)
