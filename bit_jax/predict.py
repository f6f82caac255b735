"""Run a fine-tuned model on new images; with labels, evaluate it (our eval-only mode).

    python -m bit_jax.predict --model_dir=RUN_DIR --images=photos/ [--top_k=5] \
        [--output=predictions.csv] [--batch_size=N]
    python -m bit_jax.predict --model_dir=RUN_DIR --images=a.jpg b.jpg c.png
    python -m bit_jax.predict --model_dir=RUN_DIR --images=tfds:bit_farm_animals:test --labels
    python -m bit_jax.predict --model_dir=RUN_DIR --images=folder:/data/pets --split=test --labels

`--model_dir` is a fine-tuning run directory (`bit_jax.run_dir`: params.npz + model.json).
`--images` is image files and folders of images (searched recursively), or one labelled
dataset: `folder:/path` (one sub-folder per class, as `transfer.py` reads it; `--split` picks
a split sub-folder) or `tfds:NAME:SPLIT`. Every image gets the run's own eval preprocessing
(`ModelCard.pp_eval`, in `features.extract`'s padded, masked batches over all devices, as
`finetune.evaluate` scored the run), so a labelled split gives exactly the run's test top-1.

The CSV has one row per image, in input order: its path (the example's index for TFDS), its
label with `--labels`, then `top_k` (class, probability) pairs, most probable first.
`--labels` also prints top-1, top-5 and the ECE; the class names of a labelled folder or TFDS
split must be the run's. A file that cannot be decoded (corrupt, truncated, not an image) is
reported by path on stderr and left out; grayscale, CMYK, 16-bit, alpha and tiny images are
converted by the `decode` op as in training.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys
from typing import Sequence

import jax
import numpy as np
from absl import app, flags, logging

import input_pipeline
from bit_jax import atomic_files, calibration, distributed, entry, features, run_dir
from bit_jax.errors import UserError
from input_pipeline import datasets
from input_pipeline.image_files import SPLIT as FILES_SPLIT, ImageFiles, list_images, undecodable
from input_pipeline.image_folder import ImageFolder

TFDS_PREFIX = "tfds:"
IMAGES_HELP = ("--images takes image files and folders of images, folder:/path (one "
               "sub-folder per class) or tfds:NAME:SPLIT (e.g. tfds:bit_farm_animals:test)")


@dataclasses.dataclass
class Predictions:
  """What one `predict` call found, row by row in input order."""
  names: list[str]  # Path of each image, or its index in the TFDS split.
  key: str  # What `names` are: "path" or "index".
  logits: np.ndarray  # [n, classes]
  labels: np.ndarray | None  # [n] ints, with `labels=True`.
  skipped: dict[str, str]  # Path -> why, for the images that could not be decoded.
  metrics: dict[str, float] | None  # top1, top5, ece, num_examples, with `labels=True`.

  @property
  def probs(self) -> np.ndarray:
    # As `finetune.evaluate` computes them, so the ECE here is the run's.
    return np.asarray(jax.nn.softmax(self.logits.astype(np.float64), axis=-1))


def predict(model_dir: str, images: Sequence[str], *, labels: bool = False,
            split: str | None = None, batch_size: int | None = None,
            data_dir: str | None = None, mesh: jax.sharding.Mesh | None = None,
            progress: bool = False) -> Predictions:
  """Runs the run in `model_dir` on `images` (see the module docstring for both)."""
  model, params, card = run_dir.load(model_dir)
  source, split, names, skipped = _images_source(images, split, labels, data_dir, card)
  mesh = mesh or distributed.data_mesh()
  pp = card.pp_eval() if labels else f"{card.pp_image}|keep('image')"
  batch_size = features.batch_size_for(mesh, batch_size or card.provenance.get(
      "eval_batch_size"))
  out = features.extract(model, params, source, split, pp, batch_size=batch_size, mesh=mesh,
                         outputs=("logits",), progress=progress)
  logits, label_ids = out["logits"], out.get(features.LABELS)
  key = "path" if names is not None else "index"
  names = names if names is not None else [str(i) for i in range(len(logits))]
  return Predictions(names, key, logits, label_ids, skipped,
                     metrics(logits, label_ids) if labels else None)


def metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """top-1, top-5 (top-k of all classes when there are fewer), ECE; as `finetune.evaluate`."""
  probs = np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
  k = min(5, logits.shape[-1])
  top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return {"top1": float(np.mean(logits.argmax(-1) == labels)),
          "top5": float(np.mean((top5 == labels[:, None]).any(-1))),
          "ece": calibration.expected_calibration_error(probs, labels),
          "num_examples": int(len(labels))}


def _images_source(images: Sequence[str], split: str | None, labels: bool, data_dir,
                   card: run_dir.ModelCard):
  """(source, split, row names or None for indices, skipped files) for `--images`."""
  images = [i for i in images if i]
  if not images:
    raise UserError(f"no --images given; {IMAGES_HELP}")
  datasets_given = [i for i in images if i.startswith((TFDS_PREFIX, datasets.FOLDER_PREFIX))]
  if datasets_given and len(images) > 1:
    raise UserError(f"--images={datasets_given[0]} cannot be combined with other inputs; "
                    f"{IMAGES_HELP}")
  if labels and not datasets_given:
    raise UserError("--labels needs labelled images: folder:/path (one sub-folder per "
                    "class) or tfds:NAME:SPLIT")
  if labels and card.label_mapping != "identity":
    raise UserError(f"--labels cannot evaluate a run whose labels were mapped "
                    f"({card.label_mapping}): the dataset's labels are not its classes")
  spec = images[0]
  if split is not None and not spec.startswith(datasets.FOLDER_PREFIX):
    raise UserError(f"--split={split} picks a split sub-folder of --images=folder:/path; "
                    "tfds:NAME:SPLIT names its own split, and files have none")
  if spec.startswith(TFDS_PREFIX):
    rest = spec.removeprefix(TFDS_PREFIX)
    # The split follows the last ':' before any slice: tfds:cifar10:3.0.2:test[:100].
    cut = rest[:rest.find("[")].rfind(":") if "[" in rest else rest.rfind(":")
    name, tfds_split = (rest[:cut], rest[cut + 1:]) if cut > 0 else ("", "")
    if not name or not tfds_split:
      raise UserError(f"--images={spec}: write tfds:NAME:SPLIT, e.g. tfds:cifar10:test")
    source = input_pipeline.get_source(name, data_dir)
    if labels:
      _check_class_names(source.class_names, card, spec)
    return source, tfds_split, None, {}
  if spec.startswith(datasets.FOLDER_PREFIX):
    folder = ImageFolder(spec.removeprefix(datasets.FOLDER_PREFIX))
    if labels:
      _check_class_names(folder.class_names, card, spec)
    files = ImageFiles.from_folder(folder, _folder_split(folder, split, spec))
  else:
    for path in images:
      if not os.path.exists(os.path.expanduser(path)):
        raise UserError(f"--images: {path} does not exist; {IMAGES_HELP}")
    files = ImageFiles(list_images(images))
  skipped = undecodable(files.paths)
  for path, why in skipped.items():
    logging.warning("Skipping %s: cannot decode it (%s).", path, why)
  files = files.without(skipped)
  if not len(files.paths):
    raise UserError(f"none of the {len(skipped)} images in --images can be decoded")
  return files, FILES_SPLIT, list(files.paths.astype(str)), skipped


def _folder_split(folder: ImageFolder, split: str | None, spec: str) -> str:
  splits = sorted(folder.split_sizes)
  if split is None and len(splits) == 1:
    return splits[0]
  if split is None:
    raise UserError(f"{spec} has the splits {', '.join(splits)}; pick one with --split")
  return split


def _check_class_names(names: Sequence[str] | None, card: run_dir.ModelCard, spec: str):
  if names is None or list(names) != list(card.class_names):
    have = "no class names" if names is None else f"classes {', '.join(names)}"
    raise UserError(f"{spec} has {have}, but the run was fine-tuned on the classes "
                    f"{', '.join(card.class_names)}; --labels needs the same classes in the "
                    "same order")


def to_csv(predictions: Predictions, class_names: Sequence[str], top_k: int) -> str:
  """The CSV text: name, [label,] then `top_k` (class, probability) pairs."""
  _check_top_k(top_k)
  top_k = min(top_k, len(class_names))
  probs = predictions.probs
  order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  header = [predictions.key] + (["label"] if predictions.labels is not None else [])
  for i in range(1, top_k + 1):
    header += [f"class_{i}", f"prob_{i}"]
  writer.writerow(header)
  for row, name in enumerate(predictions.names):
    line = [name] + ([class_names[predictions.labels[row]]] if predictions.labels is not None
                     else [])
    for c in order[row]:
      line += [class_names[c], f"{probs[row, c]:.6f}"]
    writer.writerow(line)
  return text.getvalue()


def _check_top_k(top_k: int):
  if top_k < 1:
    raise UserError(f"--top_k must be at least 1; got {top_k}")


def run(model_dir: str, images: Sequence[str], output: str, *, top_k: int = 5,
        labels: bool = False, split: str | None = None, batch_size: int | None = None,
        data_dir: str | None = None, progress: bool = True) -> Predictions:
  """What `python -m bit_jax.predict` does: predicts, writes the CSV, prints a summary."""
  _check_top_k(top_k)
  card = run_dir.read_card(model_dir)
  result = predict(model_dir, images, labels=labels, split=split, batch_size=batch_size,
                   data_dir=data_dir, progress=progress)
  if jax.process_index() == 0:
    atomic_files.write(output, lambda f: f.write(to_csv(result, card.class_names, top_k)),
                       text=True)
  for path, why in result.skipped.items():
    print(f"skipped {path}: cannot decode ({why})", file=sys.stderr)
  print(f"Wrote predictions for {len(result.names)} images to {output}"
        + (f"; skipped {len(result.skipped)} that cannot be decoded" if result.skipped else ""))
  if result.metrics:
    m = result.metrics
    print(f"top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  ECE {m['ece']:.4f}  "
          f"({m['num_examples']} examples)")
  return result


def main(argv):
  f = flags.FLAGS
  distributed.maybe_initialize({})  # Every host runs the same command (bit_jax.distributed).
  # Extra arguments are more images: `--images=dir/*.jpg` reaches us as one flag and the rest.
  entry.run(lambda: run(f.model_dir, [*f.images, *argv[1:]], f.output, top_k=f.top_k,
                        labels=f.labels, split=f.split, batch_size=f.batch_size,
                        data_dir=f.data_dir))


if __name__ == "__main__":
  flags.DEFINE_string("model_dir", None, "A fine-tuning run directory (params.npz + "
                      "model.json).", required=True)
  flags.DEFINE_list("images", [], "Image files, folders, folder:/path or tfds:NAME:SPLIT; "
                    "more files may follow as arguments.")
  flags.DEFINE_integer("top_k", 5, "Classes per image in the CSV.")
  flags.DEFINE_string("output", "predictions.csv", "The CSV to write.")
  flags.DEFINE_bool("labels", False, "Also print top-1/top-5/ECE (folder: or tfds: images).")
  flags.DEFINE_string("split", None, "The split sub-folder of a folder:/path input.")
  flags.DEFINE_integer("batch_size", None, "Global batch size; default the run's eval batch "
                       "size, else 64, rounded up to a multiple of the devices.")
  flags.DEFINE_string("data_dir", None, "TFDS data directory.")
  entry.prepare()
  app.run(main)
