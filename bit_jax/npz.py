"""Read and write BiT checkpoints in the official .npz layout.

The file holds flat arrays keyed `resnet/<path>`, e.g.
`resnet/block1/unit01/a/standardized_conv2d/kernel`; our params tree is the same paths
nested, without the `resnet/` prefix (see `bit_jax.models`). Some released files number
their convs (`standardized_conv2d_1`); those names are accepted on load and written back
plain, as every BiT loader reads them.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np

from bit_jax.errors import UserError

PREFIX = "resnet/"
_NUMBERED_CONV = re.compile(r"(?<=/)standardized_conv2d_\d+(?=/)")


def load(path: str | os.PathLike) -> dict[str, Any]:
  """The params tree stored in an official-layout BiT .npz file."""
  return unflatten(read_flat(path))


def save(params: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes `params` in the official layout, atomically: an existing file is replaced
  only once the new one is complete."""
  arrays = {PREFIX + key: value for key, value in flatten(params).items()}
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(suffix=".npz.tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp_path, path)
  except BaseException:
    os.unlink(tmp_path)
    raise


def read_flat(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """`{"block1/unit01/a/...": array}` from a file, conv names normalised, prefix dropped."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"checkpoint {path!r} does not exist; expected an official BiT .npz file")
  try:
    with np.load(path, allow_pickle=False) as data:
      raw = {key: data[key] for key in data.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise UserError(f"checkpoint {path!r} is not a readable .npz file ({e}); "
                    "expected an official BiT .npz such as BiT-M-R50x1.npz") from None
  outside = sorted(key for key in raw if not key.startswith(PREFIX))
  if not raw or outside:
    found = f"keys outside {PREFIX!r}: {outside[:3]}" if outside else "no arrays"
    raise UserError(f"checkpoint {path!r} is not in the official BiT layout ({found}); "
                    f"every key must start with {PREFIX!r}, e.g. "
                    f"'{PREFIX}root_block/standardized_conv2d/kernel'")
  flat = {}
  for key, value in raw.items():
    name = _NUMBERED_CONV.sub("standardized_conv2d", key[len(PREFIX):])
    if name in flat:
      raise UserError(f"checkpoint {path!r} has two arrays for {name!r} "
                      f"(one of them {key!r}); expected one per parameter")
    flat[name] = value
  return flat


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dict → `{"a/b/c": np.ndarray}`; device arrays are fetched to the host."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + "/"))
    else:
      flat[path] = np.asarray(value)
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """`{"a/b/c": x}` → `{"a": {"b": {"c": x}}}`."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree
