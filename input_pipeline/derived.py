"""Sources derived from another: a chosen subset of a split, or one with a map applied.

Few-shot fine-tuning trains on `Subset(source, "train", indices)`; VTAB tasks read their
labels through `Mapped(source, task.preprocess)`. Both behave as any other `Source`, so the
train and eval streams (sharding, shuffling, exact resume) need not know about them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from input_pipeline import datasets
from input_pipeline.errors import InputError


class Subset:
  """The examples of `split` at `indices` (positions in the split's fixed read order)."""

  def __init__(self, source: datasets.Source, split: str, indices):
    self._source, self._split = source, split
    self.indices = np.unique(np.asarray(indices, np.int64))
    self.name = f"{source.name}[{len(self.indices)} of {split}]"
    self.num_classes, self.class_names = source.num_classes, source.class_names
    self.image_shape = source.image_shape

  def _check(self, split):
    if split != self._split:
      raise InputError(f"{self.name} holds only split {self._split!r}, not {split!r}")

  def num_examples(self, split, process_index=0, process_count=1) -> int:
    self._check(split)
    return len(np.array_split(self.indices, process_count)[process_index])

  def read(self, split, process_index=0, process_count=1) -> tf.data.Dataset:
    self._check(split)
    mine = tf.constant(np.array_split(self.indices, process_count)[process_index])
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(mine, tf.ones_like(mine)), default_value=0)
    ds = self._source.read(split).enumerate()
    ds = ds.filter(lambda i, _: table.lookup(i) > 0)
    return ds.map(lambda _, example: example)


class Mapped:
  """`source` with `fn(example) -> example` applied to every example it reads.

  Its metadata is the source's but where given: `num_classes` says `fn` relabels, so the
  source's class names no longer apply; `image_shape` says `fn` changes the images.
  """

  def __init__(self, source: datasets.Source, fn: Callable, num_classes: int | None = None,
               name: str | None = None, *, class_names: tuple[str, ...] | None = None,
               image_shape: tuple[int | None, ...] | None = None):
    self._source, self._fn = source, fn
    self.name = name or source.name
    self.num_classes = num_classes if num_classes is not None else source.num_classes
    self.class_names = class_names or (source.class_names if num_classes is None else None)
    self.image_shape = image_shape or source.image_shape

  def num_examples(self, split, process_index=0, process_count=1) -> int:
    return self._source.num_examples(split, process_index, process_count)

  def read(self, split, process_index=0, process_count=1) -> tf.data.Dataset:
    ds = self._source.read(split, process_index, process_count)
    return ds.map(self._fn, num_parallel_calls=tf.data.AUTOTUNE)


def read_labels(source: datasets.Source, split: str, key: str = "label") -> np.ndarray:
  """Every label of `split` in read order, without decoding images."""
  ds = source.read(split).map(lambda example: example[key])
  return np.fromiter(ds.batch(4096).unbatch().as_numpy_iterator(), np.int64)
