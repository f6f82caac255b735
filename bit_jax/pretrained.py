"""Fit pretrained parameters to a model: keep the backbone, replace the head.

    params, report = pretrained.load("BiT-M-R50x1.npz", model)
    print(report)   # which parameters were loaded and which replaced

A file that does not fit the model fails with one line naming the first mismatching keys and
the model the file looks like, before anything is trained on it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bit_jax import models, npz
from bit_jax.errors import UserError

HEAD = "head/"
_SHOWN = 3  # Mismatching keys named in an error; more would not fit one line.


@dataclasses.dataclass(frozen=True)
class FitReport:
  loaded: tuple[str, ...]
  replaced: tuple[str, ...]  # Zero-initialised for the model's head.
  dropped: tuple[str, ...]   # In the file but not wanted, e.g. a head for a backbone.

  def __str__(self) -> str:
    lines = [f"loaded {len(self.loaded)} parameter arrays"]
    if self.replaced:
      lines.append(f"replaced (zero-initialised): {', '.join(self.replaced)}")
    if self.dropped:
      lines.append(f"dropped: {', '.join(self.dropped)}")
    return "; ".join(lines)


def load(path: str | os.PathLike, model: models.ResNetV2, *, reset_head: bool = False
         ) -> tuple[dict[str, Any], FitReport]:
  """Params for `model` from an official .npz; see `fit`."""
  return fit(npz.load(path), model, reset_head=reset_head, source=os.fspath(path))


def fit(params: Mapping[str, Any], model: models.ResNetV2, *, reset_head: bool = False,
        source: str = "checkpoint") -> tuple[dict[str, Any], FitReport]:
  """Checks `params` against `model`'s tree and adapts the head.

  The head is replaced by zeros when its shape differs from the model's (a new number of
  classes) or when `reset_head`; it is dropped when the model has none. Every backbone
  array must be present with the model's shape, and nothing else may be in `params`.
  """
  expected = model_param_shapes(model)
  given = {key: np.asarray(value) for key, value in npz.flatten(params).items()}

  missing = [k for k in expected if k not in given and not k.startswith(HEAD)]
  unexpected = [k for k in given if k not in expected and not k.startswith(HEAD)]
  wrong_shape = [k for k in expected if k in given and not k.startswith(HEAD)
                 and given[k].shape != expected[k]]
  if missing or unexpected or wrong_shape:
    raise UserError(_mismatch_message(source, model, given, expected,
                                      missing, unexpected, wrong_shape))

  fitted, loaded, replaced = {}, [], []
  for key, shape in expected.items():
    if key.startswith(HEAD) and (reset_head or key not in given
                                 or given[key].shape != shape):
      fitted[key] = np.zeros(shape, np.float32)
      replaced.append(key)
    else:
      fitted[key] = given[key].astype(np.float32)
      loaded.append(key)
  dropped = [k for k in given if k.startswith(HEAD) and k not in expected]
  report = FitReport(tuple(loaded), tuple(replaced), tuple(dropped))
  return npz.unflatten(fitted), report


def model_param_shapes(model: models.ResNetV2) -> dict[str, tuple[int, ...]]:
  """`param_shapes` of `model`'s parameters, none of them computed."""
  # Shapes do not depend on the image size: 32 px is the smallest that reaches block4.
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32)))
  return param_shapes(variables["params"])


def param_shapes(params: Any) -> dict[str, tuple[int, ...]]:
  """`{"block1/unit01/conv1/kernel": shape, ...}` of a params tree whose leaves have a shape:
  arrays, `jax.ShapeDtypeStruct`s, or a checkpoint's array metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in leaves}


def describe(shapes: Mapping[str, tuple[int, ...]]) -> str:
  """What architecture flat param shapes look like, e.g. `R50x3 (units 3,4,6,3, ...)`."""
  root = shapes.get("root_conv/kernel")
  units = []
  for block in range(1, 10):
    count = len({k.split("/")[1] for k in shapes if k.startswith(f"block{block}/unit")})
    if not count:
      break
    units.append(count)
  if root is None or not units:
    return "not a BiT ResNet-v2 (no root block or blocks)"
  root_width = root[-1]
  arch_name = next(
      (name for name, arch in {**models.ARCHITECTURES, **models.TINY_ARCHITECTURES}.items()
       if arch.units_per_block == tuple(units)
       and arch.base_width * arch.width_factor == root_width), None)
  head = shapes.get("head/kernel")
  classes = f", {head[-1]}-class head" if head is not None else ", no head"
  shape = f"units {','.join(map(str, units))}, root width {root_width}{classes}"
  return f"{arch_name} ({shape})" if arch_name else f"an unlisted ResNet-v2 ({shape})"


def _mismatch_message(source, model, given, expected, missing, unexpected, wrong_shape):
  parts = []
  if missing:
    parts.append(f"{len(missing)} missing, e.g. {', '.join(missing[:_SHOWN])}")
  if unexpected:
    parts.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:_SHOWN])}")
  if wrong_shape:
    shown = ", ".join(f"{k} {given[k].shape} vs {expected[k]}" for k in wrong_shape[:_SHOWN])
    parts.append(f"{len(wrong_shape)} of the wrong shape (file vs model), e.g. {shown}")
  found = {key: value.shape for key, value in given.items()}
  return (f"{source} does not fit the model {describe(expected)}: {'; '.join(parts)}; "
          f"the file looks like {describe(found)}")
