"""`subset`: a model with an N-way head on a dataset whose classes are a subset of the N.

ImageNet-A and ImageNet-R hold 200 of the 1000 ImageNet classes, ObjectNet 113 classes that
overlap ImageNet's (each one or several ImageNet classes). A mapping file says, for each class
of the dataset, which head classes are it; logits outside the union of those classes are set to
-inf, so a class outside the subset can never be predicted (hendrycks/natural-adv-examples
`eval.py`, `net(data)[:, indices_in_1k]`; hendrycks/imagenet-r `eval.py`,
`net(data)[:, imagenet_r_mask]`), and a prediction is correct if it is one of the image's
mapped classes (ObjectNet's many-to-one mapping). Images of a class the file does not map are
not counted.

The mapping file is JSON: `{"<dataset class>": [head index, ...], ...}`, a class given by its
label index (`"6"`) or its name (a TFDS class name, or a `folder:` dataset's sub-folder name,
e.g. ObjectNet's `"alarm_clock"`). `mappings/imagenet_a.json` and `mappings/imagenet_r.json`
ship with this package (TFDS `imagenet_a` / `imagenet_r` labels are already ImageNet indices;
the 200 indices are those of the two `eval.py` above). For ObjectNet, `mapping` may instead
name the `mappings/` folder of the ObjectNet download: `objectnet_mapping` reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bit_jax.errors import UserError
from bit_jax.evaluators import inference, spec

FIELDS = {**spec.DATA, "mapping": ""}
MAPPINGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mappings")


def load_mapping(path: str, num_classes: int, where: str) -> dict[str, list[int]]:
  """{dataset class: head indices} from a mapping file (or ObjectNet's `mappings/` folder);
  `UserError` if it does not fit a head of `num_classes`. A bare file name is looked up in
  `MAPPINGS_DIR` too."""
  if os.path.isdir(path):
    raw = objectnet_mapping(path, where)
  else:
    shipped = os.path.join(MAPPINGS_DIR, path)
    try:
      with open(path if os.path.exists(path) or not os.path.exists(shipped) else shipped) as f:
        raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise UserError(f"{where}={path!r} cannot be read as a mapping file ({e}); expected "
                      '{"<dataset class>": [head index, ...]}, ObjectNet\'s mappings/ folder, '
                      f"or one of {', '.join(sorted(os.listdir(MAPPINGS_DIR)))}") from None
  if not isinstance(raw, dict) or not raw:
    raise UserError(f"{where}={path!r} is not a mapping file: expected a non-empty JSON object "
                    '{"<dataset class>": [head index, ...]}')
  mapping = {}
  for key, value in raw.items():
    indices = [value] if isinstance(value, int) else value
    if (not isinstance(indices, list) or not indices
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)):
      raise UserError(f"{where}={path!r}: class {key!r} maps to {value!r}; expected a list of "
                      "head indices")
    outside = [i for i in indices if not 0 <= i < num_classes]
    if outside:
      raise UserError(f"{where}={path!r} does not fit the model's {num_classes}-way head: "
                      f"class {key!r} maps to head index {outside[0]} (valid: 0 to "
                      f"{num_classes - 1})")
    mapping[str(key)] = sorted(set(indices))
  return mapping


OBJECTNET_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                   "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


def objectnet_mapping(directory: str, where: str) -> dict[str, list[int]]:
  """{ObjectNet image folder: ImageNet-1k class indices} from the download's `mappings/`.

  ObjectNet's 113 classes that overlap ImageNet, each one or several ImageNet classes
  (`objectnet_to_imagenet_1k.json`, names joined by "; "). A name's line number + 1 in
  `imagenet_to_label_2012_v2` is its ILSVRC-2012 id; `pytorch_to_imagenet_2012_id.json`
  maps the index of the sorted-WordNet-id order (TFDS imagenet2012's, this head's) to it.
  """
  paths = [os.path.join(directory, name) for name in OBJECTNET_FILES]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UserError(f"{where}={directory!r} is a folder without {os.path.basename(missing[0])}; "
                    f"expected ObjectNet's mappings/ folder ({', '.join(OBJECTNET_FILES)})")
  with open(paths[0]) as f:
    folder_of = {label: folder for folder, label in json.load(f).items()}
  with open(paths[1]) as f:
    to_imagenet = json.load(f)
  with open(paths[2]) as f:
    index_of_id = {int(v): int(k) for k, v in json.load(f).items()}
  with open(paths[3]) as f:
    id_of_name = {name: i + 1 for i, name in enumerate(f.read().splitlines())}
  try:
    return {folder_of[label]: sorted({index_of_id[id_of_name[name]]
                                      for name in names.split("; ")})
            for label, names in to_imagenet.items()}
  except KeyError as e:
    raise UserError(f"{where}={directory!r}: {e} is not in the other mapping files; expected "
                    "the mappings/ folder of ObjectNet 1.0") from None


def mapping_matrix(mapping: Mapping[str, list[int]], class_names: Sequence[str] | None,
                   num_dataset_classes: int, num_classes: int) -> np.ndarray:
  """(dataset classes, head classes) bool: row l is True at the head classes that are l."""
  index_of = {name: i for i, name in enumerate(class_names or [])}
  matrix = np.zeros((num_dataset_classes, num_classes), bool)
  for key, indices in mapping.items():
    row = int(key) if key.isdigit() else index_of.get(key)
    if row is None or not 0 <= row < num_dataset_classes:
      known = f"e.g. {', '.join(list(index_of)[:3])}" if index_of else "no class names"
      raise UserError(f"the mapping names class {key!r}, which the dataset does not have "
                      f"({num_dataset_classes} classes; {known})")
    matrix[row, indices] = True
  return matrix


def make_step(model):
  """batch -> top-1/top-5 hits among the subset's classes, over images of mapped classes."""

  def step(params, images, labels, mask, matrix):
    logits, _ = model.apply({"params": params}, images)
    allowed = jnp.any(matrix, axis=0)
    logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
    if labels.ndim > 1:
      labels = jnp.argmax(labels, axis=-1)
    in_range = (labels >= 0) & (labels < matrix.shape[0])
    rows = matrix[jnp.clip(labels, 0, matrix.shape[0] - 1)]  # (batch, head classes)
    counted = mask.astype(bool) & in_range & jnp.any(rows, axis=-1)
    k = min(5, matrix.shape[1])
    _, top = jax.lax.top_k(logits, k)
    hits = jnp.take_along_axis(rows, top, axis=-1)
    return {"top1": jnp.sum(hits[:, 0] & counted), "top5": jnp.sum(jnp.any(hits, -1) & counted),
            "counted": jnp.sum(counted)}

  return step


class Evaluator(inference.OneSplit):
  """Top-1/top-5 on `dataset`, the head restricted to the classes `mapping` names."""

  def __init__(self, name: str, entry: Mapping[str, Any], run: inference.Run):
    super().__init__(name, entry, run)
    spec.non_empty_str(name, "mapping", entry["mapping"])
    self.mapping = load_mapping(entry["mapping"], run.num_classes, f"evals.{name}.mapping")
    self._matrix = None
    self._step = inference.jitted(make_step, run.mesh, run.model)

  def describe(self) -> str:
    return f"{super().describe()}, {len(self.mapping)} classes mapped"

  def run_on(self, params: Any) -> dict[str, float]:
    if self._matrix is None:
      names = self.data.source.class_names
      size = self.data.source.num_classes or len(names or []) or (
          1 + max(int(k) for k in self.mapping if k.isdigit()))
      self._matrix = jnp.asarray(
          mapping_matrix(self.mapping, names, size, self.run.num_classes))
    sums = inference.sum_over(self.data, lambda b: self._step(
        params, b["image"], b["label"], b["_mask"], self._matrix))
    if not sums["counted"]:
      raise ValueError(f"no image of {self.dataset} {self.split} is of a mapped class")
    counted = float(sums["counted"])
    return {"top1": float(sums["top1"]) / counted, "top5": float(sums["top5"]) / counted,
            "num_counted": counted}
