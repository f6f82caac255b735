"""Read and write BiT checkpoints in the official .npz layout.

The file holds flat arrays keyed `resnet/<path>`, e.g.
`resnet/block1/unit01/a/standardized_conv2d/kernel`. Our params tree names modules for what
they are (`block1/unit01/conv1/kernel`, see `bit_jax.models`); `OFFICIAL_NAMES` is the one
mapping between the two, applied on load and on save. Some released files number their
convs (`standardized_conv2d_1`); those names are accepted on load and written back plain,
as every BiT loader reads them.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any, Mapping

import numpy as np

from bit_jax import atomic_files
from bit_jax.errors import UserError

PREFIX = "resnet/"
_NUMBERED_CONV = re.compile(r"(?<=/)standardized_conv2d_\d+(?=/)")


def load(path: str | os.PathLike) -> dict[str, Any]:
  """The params tree (our names) stored in an official-layout BiT .npz file."""
  return unflatten(from_official(read_flat(path)))


def save(params: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes `params` in the official layout, atomically: an existing file is replaced
  only once the new one is complete."""
  arrays = {PREFIX + key: value for key, value in to_official(flatten(params)).items()}
  atomic_files.write(path, lambda f: np.savez(f, **arrays))


# Our parameter path -> the release's, under `blockB/unitNN/` for the units' entries. The
# head is a dense layer here and a 1x1 conv there: its kernel gains two axes on save.
OFFICIAL_NAMES = {
    "root_conv/kernel": "root_block/standardized_conv2d/kernel",
    "norm/scale": "group_norm/gamma",
    "norm/bias": "group_norm/beta",
    "head/kernel": "head/conv2d/kernel",
    "head/bias": "head/conv2d/bias",
}
OFFICIAL_UNIT_NAMES = {
    "norm1/scale": "a/group_norm/gamma",
    "norm1/bias": "a/group_norm/beta",
    "conv1/kernel": "a/standardized_conv2d/kernel",
    "conv_proj/kernel": "a/proj/standardized_conv2d/kernel",
    "norm2/scale": "b/group_norm/gamma",
    "norm2/bias": "b/group_norm/beta",
    "conv2/kernel": "b/standardized_conv2d/kernel",
    "norm3/scale": "c/group_norm/gamma",
    "norm3/bias": "c/group_norm/beta",
    "conv3/kernel": "c/standardized_conv2d/kernel",
}
_UNIT = re.compile(r"^(block\d+/unit\d+/)(.*)$")
_HEAD_KERNEL = "head/kernel"


def to_official(flat: Mapping[str, Any]) -> dict[str, Any]:
  """`{our path: array}` -> `{official path: array}` (no `resnet/` prefix); paths the
  release has no name for (a layer a researcher added) keep ours."""
  official = {}
  for path, value in flat.items():
    if path == _HEAD_KERNEL:
      value = np.asarray(value)[None, None]
    official[_rename(path, OFFICIAL_NAMES, OFFICIAL_UNIT_NAMES)] = value
  return official


def from_official(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of `to_official`."""
  ours = {}
  for path, value in flat.items():
    path = _rename(path, _OUR_NAMES, _OUR_UNIT_NAMES)
    if path == _HEAD_KERNEL and np.ndim(value) == 4:
      value = value[0, 0]
    ours[path] = value
  return ours


_OUR_NAMES = {official: ours for ours, official in OFFICIAL_NAMES.items()}
_OUR_UNIT_NAMES = {official: ours for ours, official in OFFICIAL_UNIT_NAMES.items()}


def _rename(path: str, names: Mapping[str, str], unit_names: Mapping[str, str]) -> str:
  unit = _UNIT.match(path)
  if unit:
    return unit.group(1) + unit_names.get(unit.group(2), unit.group(2))
  return names.get(path, path)


def read_flat(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """`{"block1/unit01/a/...": array}` from a file, conv names normalised, prefix dropped.

  Every array must be finite: a file of NaNs (from a diverged run) is refused, naming the
  first such array, rather than fine-tuned from.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"checkpoint {path!r} does not exist; expected an official BiT .npz file")
  if not zipfile.is_zipfile(path):  # Else numpy takes it for pickled data or a .npy.
    raise UserError(f"checkpoint {path!r} is not a zip/.npz file (truncated, or another "
                    "format); expected an official BiT .npz such as BiT-M-R50x1.npz")
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
  for key, value in raw.items():
    if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
      raise UserError(f"checkpoint {path!r} holds NaN or Inf in {key!r}; expected finite "
                      "parameters (was it exported from a diverged run?)")
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
