"""From per-process numpy batches to global `jax.Array`s sharded on `data`.

Each process loads global_batch_size / process_count examples; the global batch
is `jax.make_array_from_process_local_data` over `NamedSharding(mesh,
P("data"))`, so a jitted step sees one array whose leading dimension is the
global batch. Numeric fields only: string fields (e.g. `file_name`) stay numpy
arrays holding this process's rows.
"""
import collections
from typing import Iterator

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from input_pipeline import datasets
from input_pipeline import ops
from input_pipeline import streams
from input_pipeline.errors import InputError

DATA_AXIS = "data"


def train_iterator(dataset: str | datasets.Source, split: str, pp: str,
                   global_batch_size: int, mesh: jax.sharding.Mesh, *,
                   seed: int = 0, start_step: int = 0,
                   data_dir: str | None = None, shuffle_buffer: int = 10_000,
                   cache: bool = False, prefetch: int = 2
                   ) -> Iterator[dict[str, jax.Array]]:
  """Endless global training batches. To resume, pass the checkpoint's step
  as `start_step`: the batches are exactly those an uninterrupted run sees.
  """
  ops.get_preprocess_fn(pp)  # A typo fails before any data is prepared.
  local = local_batch_size(global_batch_size, mesh)
  source = _source(dataset, data_dir)
  pi, pc = jax.process_index(), jax.process_count()
  ds = streams.train_dataset(source, split, pp, local, seed=seed,
                             start_step=start_step,
                             shuffle_buffer=shuffle_buffer, cache=cache,
                             process_index=pi, process_count=pc)
  batches = streams.iterate(ds, source, split, pi, pc)
  return _prefetch((to_global(b, mesh) for b in batches), prefetch)


class EvalBatches:
  """Re-iterable: each pass yields `len(self)` global batches covering the
  split exactly once; `batch["_mask"]` is True for real examples."""

  def __init__(self, dataset: str | datasets.Source, split: str, pp: str,
               global_batch_size: int, mesh: jax.sharding.Mesh, *,
               data_dir: str | None = None, prefetch: int = 2):
    ops.get_preprocess_fn(pp)  # A typo fails before any data is prepared.
    local = local_batch_size(global_batch_size, mesh)
    self.source = _source(dataset, data_dir)
    self.split, self.mesh, self.prefetch = split, mesh, prefetch
    self._process = jax.process_index(), jax.process_count()
    self.num_examples = self.source.num_examples(split)
    self._ds, self._num_batches = streams.eval_dataset(
        self.source, split, pp, local, process_index=self._process[0],
        process_count=self._process[1])

  def __len__(self) -> int:
    return self._num_batches

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    batches = streams.iterate(self._ds, self.source, self.split, *self._process)
    return _prefetch((to_global(b, self.mesh) for b in batches), self.prefetch)


def eval_iterator(dataset: str | datasets.Source, split: str, pp: str,
                  global_batch_size: int, mesh: jax.sharding.Mesh, *,
                  data_dir: str | None = None, prefetch: int = 2
                  ) -> EvalBatches:
  """Every example of `split` exactly once, in padded, masked global batches."""
  return EvalBatches(dataset, split, pp, global_batch_size, mesh,
                     data_dir=data_dir, prefetch=prefetch)


def local_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """This process's share of the global batch, after checking it divides."""
  if DATA_AXIS not in mesh.axis_names:
    raise InputError(f"the mesh has axes {mesh.axis_names}; batches are "
                     f"sharded over an axis named {DATA_AXIS!r}")
  devices, processes = mesh.shape[DATA_AXIS], jax.process_count()
  if (global_batch_size < 1 or global_batch_size % devices or
      global_batch_size % processes):
    raise InputError(f"global batch size {global_batch_size} must be a "
                     f"positive multiple of the {devices} devices on the "
                     f"{DATA_AXIS!r} mesh axis and of the {processes} "
                     "processes")
  return global_batch_size // processes


def to_global(batch: dict[str, np.ndarray],
              mesh: jax.sharding.Mesh) -> dict[str, jax.Array | np.ndarray]:
  """Per-process numpy batch -> global arrays sharded `P("data")`."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: v if v.dtype.kind in "OSU" else
          jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def _source(dataset, data_dir) -> datasets.Source:
  if isinstance(dataset, str):
    return datasets.get_source(dataset, data_dir)
  return dataset


def _prefetch(batches: Iterator, size: int) -> Iterator:
  """Keeps `size` batches in flight: transfers overlap the step running."""
  queue = collections.deque()
  for batch in batches:
    queue.append(batch)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
