"""Where the train state lives on the mesh: replicated on every device, or sharded (FSDP).

`config.sharding` chooses, for upstream training and fine-tuning alike:

- `replicated`: every device holds the whole state (parameters and optimizer state), as
  data-parallel training always did. Simplest; fine while the state is small next to the
  device's memory (R50x1: 0.2 GiB of parameters and momentum).
- `fsdp`: each leaf with at least `config.fsdp_min_size` elements is split over the mesh's
  `data` axis along its largest dimension that the axis size divides; smaller leaves (biases,
  GroupNorm scales) stay replicated. A device then holds 1/N of the large leaves and their
  momentum, and `jax.jit` (GSPMD) all-gathers each weight where the step uses it and
  reduce-scatters its gradient: the same update, in a fraction of the memory. This is
  big_vision's `fsdp` rule (`big_vision/sharding.py`, `fsdp(axis, min_size_to_shard_mb=4)`:
  "shards the largest dimension that is not sharded already and is divisible by the total
  device count"), with the threshold counted in elements: its 4 MiB is 2**20 float32 values.

The rule reads only shapes, so the optimizer state (optax's momentum has the parameters'
shapes) is sharded as the parameters are, and the shardings of a state are the same whether
it is built, restored from a checkpoint written on another number of devices, or read here
from abstract shapes (`jax.eval_shape`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bit_jax.errors import UserError

MODES = ("replicated", "fsdp")
AXIS = "data"  # The mesh axis the batch and, with fsdp, the large leaves are split over.
DEFAULT_MIN_SIZE = 2**20  # Elements; big_vision's fsdp default of 4 MiB of float32.


def check(mode: str, min_size: int = DEFAULT_MIN_SIZE) -> None:
  """`UserError` (one line) unless `mode` is one of `MODES` and `min_size` an integer >= 1."""
  if mode not in MODES:
    raise UserError(f"unknown sharding {mode!r}; valid: {', '.join(MODES)}")
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
    raise UserError(f"fsdp_min_size={min_size!r} is not valid: it must be an integer >= 1 "
                    "(elements a leaf needs to be sharded)")


def leaf_spec(shape: tuple[int, ...], axis_size: int, min_size: int = DEFAULT_MIN_SIZE) -> P:
  """The fsdp rule for one leaf: `P()` (replicated) if it has fewer than `min_size` elements
  or no dimension divisible by `axis_size`, else `AXIS` on its largest divisible dimension
  (of equal ones, the last: a conv kernel's output channels)."""
  if axis_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for i in sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True):
    if shape[i] % axis_size == 0:
      return P(*(None,) * i, AXIS)
  return P()


def shardings(tree: Any, mesh: jax.sharding.Mesh, mode: str,
              min_size: int = DEFAULT_MIN_SIZE) -> Any:
  """A `NamedSharding` for each leaf of `tree` (arrays or `jax.ShapeDtypeStruct`s) on
  `mesh`, by `mode` (see the module docstring); `UserError` for an unknown mode."""
  check(mode, min_size)
  if mode == "replicated":
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
  axis_size = mesh.shape[AXIS]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), axis_size, min_size)), tree)


def abstract(tree: Any, tree_shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves with `tree_shardings`: what a checkpoint is
  restored into (orbax reads each device's part on whatever mesh this run has)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, tree_shardings)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """`tree` replicated on every device of `mesh` (all-gathers sharded leaves): every process
  can then read it whole, e.g. to export it. A collective: every process must call it. A
  tree already replicated is returned as it is."""
  if all(x.sharding.is_fully_replicated for x in jax.tree.leaves(tree)):
    return tree
  return jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(tree)


def describe(tree: Any, tree_shardings: Any) -> str:
  """One line for the log: how much of `tree` each device holds under `tree_shardings`."""
  leaves, specs = jax.tree.leaves(tree), jax.tree.leaves(tree_shardings)
  total = sum(_nbytes(x) for x in leaves)
  per_device = sum(_nbytes(x) / _num_shards(x, s) for x, s in zip(leaves, specs))
  sharded = sum(_num_shards(x, s) > 1 for x, s in zip(leaves, specs))
  return (f"{sharded} of {len(leaves)} state leaves sharded; {per_device / 2**30:.3f} GiB of "
          f"the {total / 2**30:.3f} GiB state per device")


def _nbytes(x: Any) -> int:
  return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def _num_shards(x: Any, sharding: NamedSharding) -> int:
  """Into how many distinct parts `sharding` splits `x` (1: replicated)."""
  shard = sharding.shard_shape(tuple(x.shape))
  return max(1, int(np.prod([n // max(1, m) for n, m in zip(x.shape, shard)], dtype=np.int64)))
