"""A source whose examples carry their position in the split, so outputs can be matched back.

`Indexed(source)` adds `"_index"` (int64): the example's position in `split` as one process
reads it, also when each of several processes reads only its shard. The leading underscore
makes it survive `keep(...)`, as `_rng` does, so an eval pp such as
`"decode|resize(128)|value_range(-1,1)|onehot(10)|keep('image', 'label')"` need not change;
eval padding gives it 0 (`_mask` is False there).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline import datasets
from input_pipeline import splits

INDEX = "_index"


class Indexed:
  """`source` with `INDEX` added to every example; otherwise the same `datasets.Source`."""

  def __init__(self, source: datasets.Source):
    self.source = source
    self.name = source.name
    self.num_classes, self.class_names = source.num_classes, source.class_names
    self.image_shape = source.image_shape

  def __getattr__(self, name):  # builder, split_sizes, first_undecodable, ...
    if name == "source":  # Not set yet (e.g. while unpickling): no recursion.
      raise AttributeError(name)
    return getattr(self.source, name)

  def num_examples(self, split, process_index=0, process_count=1) -> int:
    return self.source.num_examples(split, process_index, process_count)

  def read(self, split, process_index=0, process_count=1) -> tf.data.Dataset:
    positions = tf.constant(self.positions(split, process_index, process_count))
    return self.source.read(split, process_index, process_count).enumerate().map(
        lambda i, ex: {**ex, INDEX: tf.gather(positions, i)})

  def positions(self, split, process_index=0, process_count=1) -> np.ndarray:
    """Positions in `split` of the examples of this process's shard, in read order."""
    sizes = _split_sizes(self.source)
    if sizes is None or process_count == 1:  # No metadata (mock data): shards in order.
      offset = sum(self.source.num_examples(split, p, process_count)
                   for p in range(process_index))
      return offset + np.arange(self.num_examples(split, process_index, process_count))
    whole = splits.absolute_ranges(split, sizes, self.name)
    starts = np.cumsum([0] + [stop - start for _, start, stop in whole])
    mine = splits.absolute_ranges(splits.shard(split, process_index, process_count), sizes,
                                  self.name)
    out = []
    for name, start, stop in mine:
      for (whole_name, a, b), base in zip(whole, starts):
        if whole_name == name and a <= start and stop <= b:
          out.append(base + np.arange(start - a, stop - a))
          break
    return np.concatenate(out) if out else np.zeros([0], np.int64)


def _split_sizes(source) -> dict[str, int] | None:
  sizes = getattr(source, "split_sizes", None)  # ImageFolder.
  if sizes is not None:
    return dict(sizes)
  builder = getattr(source, "builder", None)
  infos = getattr(getattr(builder, "info", None), "splits", None)
  if not infos:
    return None
  return {name: info.num_examples for name, info in infos.items()}
