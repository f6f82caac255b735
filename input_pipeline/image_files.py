"""A list of image files as a dataset: what `bit_jax.predict` runs a model on.

    source = ImageFiles(list_images(["photos/", "extra.jpg"]))   # unlabelled
    source = ImageFiles.from_folder(ImageFolder(root), "test")   # a labelled folder's split

The files form one split, `files` (slice it as any split: `files[:100]`), in the order given;
examples are `{"image": encoded bytes, "file_name": path}` plus `"label"` (int64) when the
source is labelled. `undecodable(paths)` finds the files the `decode` op would fail on, so a
caller can report them by path and leave them out instead of stopping a stream at their batch.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from input_pipeline import splits
from input_pipeline.errors import InputError
from input_pipeline.image_folder import IMAGE_EXTENSIONS, ImageFolder

SPLIT = "files"  # Not "all": TFDS reads that as every split.


class ImageFiles:
  """A `datasets.Source` over explicit image files (optionally labelled), one split `files`."""

  def __init__(self, paths: Sequence[str], labels: Sequence[int] | None = None, *,
               class_names: Sequence[str] | None = None, name: str = "image files"):
    self.paths = np.array([os.fspath(p) for p in paths], dtype=object)
    self.labels = None if labels is None else np.asarray(labels, np.int64)
    if self.labels is not None and len(self.labels) != len(self.paths):
      raise InputError(f"{name}: {len(self.labels)} labels for {len(self.paths)} images")
    self.class_names = None if class_names is None else tuple(map(str, class_names))
    self.image_shape = None  # Files of any size.
    self.num_classes = (None if self.labels is None else
                        len(self.class_names) if self.class_names is not None
                        else int(self.labels.max(initial=-1)) + 1)
    self.name = name

  @classmethod
  def from_folder(cls, folder: ImageFolder, split: str) -> ImageFiles:
    """The files of `split` of a labelled image folder, in the folder's read order."""
    paths, labels = folder._select(split, 0, 1)  # pylint: disable=protected-access
    return cls(paths, labels, class_names=folder.class_names, name=f"{folder.name} {split}")

  @property
  def split_sizes(self) -> dict[str, int]:
    return {SPLIT: len(self.paths)}

  def _range(self, split, process_index, process_count) -> tuple[int, int]:
    sub = splits.shard(split, process_index, process_count)
    parts = splits.absolute_ranges(sub, self.split_sizes, self.name)
    if len(parts) != 1:  # `files+files` would read files twice.
      raise InputError(f"bad split {split!r} for {self.name}: it has one split, {SPLIT!r}; "
                       f"{splits.HELP}")
    _, start, stop = parts[0]
    return start, max(start, stop)

  def num_examples(self, split, process_index=0, process_count=1) -> int:
    start, stop = self._range(split, process_index, process_count)
    return stop - start

  def read(self, split, process_index=0, process_count=1) -> tf.data.Dataset:
    start, stop = self._range(split, process_index, process_count)
    columns = {"file_name": tf.constant(self.paths[start:stop].astype(str), tf.string)}
    if self.labels is not None:
      columns["label"] = tf.constant(self.labels[start:stop], tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    return ds.map(lambda ex: {**ex, "image": tf.io.read_file(ex["file_name"])},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def without(self, bad: Sequence[str]) -> ImageFiles:
    """The same source less the files in `bad`."""
    keep = ~np.isin(self.paths.astype(str), np.asarray(list(bad), dtype=str))
    return ImageFiles(self.paths[keep], None if self.labels is None else self.labels[keep],
                      class_names=self.class_names, name=self.name)


def list_images(specs: Sequence[str]) -> list[str]:
  """Files given by path, and every image file (by extension) under folders, recursively.

  Folders are walked in sorted order, hidden entries skipped; files named explicitly are kept
  whatever their extension (their content decides). A path that does not exist is an error.
  """
  paths = []
  for spec in specs:
    spec = os.path.expanduser(spec)
    if os.path.isfile(spec):
      paths.append(spec)
    elif os.path.isdir(spec):
      found = []
      for root, dirs, files in os.walk(spec):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
      if not found:
        raise InputError(f"folder {spec} has no image files "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
      paths += found
    else:
      raise InputError(f"{spec} is not an image file or a folder of images")
  return paths


def undecodable(paths: Sequence[str]) -> dict[str, str]:
  """{path: why} for the files that cannot be read or decoded as the `decode` op does.

  All files are decoded once, in parallel; only the few that fail are decoded again, one by
  one, for their error message.
  """
  paths = [os.fspath(p) for p in paths]
  if not paths:
    return {}
  decode = lambda i, path: (i, tf.shape(tf.io.decode_image(
      tf.io.read_file(path), channels=3, expand_animations=False)))
  ds = tf.data.Dataset.from_tensor_slices(
      (tf.range(len(paths), dtype=tf.int64), tf.constant(paths, tf.string)))
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors().map(lambda i, shape: i)
  good = np.zeros(len(paths), bool)
  for batch in ds.batch(1024).as_numpy_iterator():
    good[batch] = True
  return {paths[i]: _why(paths[i]) for i in np.flatnonzero(~good)}


def _why(path: str) -> str:
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    lines = [l.strip() for l in e.message.split("}}")[-1].splitlines() if l.strip()]
    return lines[0] if lines else type(e).__name__
  return "failed to decode"  # Decodes now: it failed for a passing reason (e.g. I/O).
