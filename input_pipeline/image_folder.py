"""`folder:/path`: fine-tune on your own images, no TFDS preparation step.

Layouts (the first level decides):
  path/<class>/<image>          one split, `train`; hold out data by slicing,
                                e.g. train[:90%] and train[90%:]
  path/<split>/<class>/<image>  one split per sub-folder (train/, test/, ...)

Labels index the sorted class-folder names (the union over splits, so ids agree
across splits). Files are listed in one fixed shuffled order (seeded 0), as
TFDS records are, so `train[:10%]` samples every class. Examples are
`{"image": encoded bytes, "label": int64, "file_name": path}`; decode with the
`decode` op, which turns 1- and 4-channel files into RGB.

Opening a folder checks that every file starts like a JPEG, PNG, GIF, BMP or
WebP, so junk and empty files fail at once, naming the file. Damage further into
a file only shows when it is decoded; `first_undecodable` then finds the file.
"""
import os

from absl import logging
import numpy as np
import tensorflow as tf

from input_pipeline import splits
from input_pipeline.errors import InputError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


class ImageFolder:
  """A `datasets.Source` over an image folder."""

  def __init__(self, root: str):
    self.root = os.path.abspath(os.path.expanduser(root))
    self.name = f"folder:{self.root}"
    if not os.path.isdir(self.root):
      raise InputError(f"image folder {self.root} does not exist or is not a "
                       "folder")
    try:
      files = self._list()  # {split: {class: [path, ...]}}
    except OSError as e:
      raise InputError(f"cannot read image folder {self.root}: "
                       f"{e.strerror or e}") from None
    self.class_names = tuple(sorted({c for by_class in files.values()
                                     for c in by_class}))
    self.image_shape = None  # Files of any size.
    self.num_classes = len(self.class_names)
    label_of = {c: i for i, c in enumerate(self.class_names)}
    self._paths, self._labels = {}, {}
    for split, by_class in files.items():
      pairs = [(p, label_of[c]) for c, ps in sorted(by_class.items())
               for p in ps]
      order = np.random.default_rng(0).permutation(len(pairs))
      self._paths[split] = np.array([pairs[i][0] for i in order], dtype=object)
      self._labels[split] = np.array([pairs[i][1] for i in order], np.int64)
    for paths in self._paths.values():
      for path in paths:
        _check_header(path)

  @property
  def split_sizes(self) -> dict[str, int]:
    return {s: len(p) for s, p in self._paths.items()}

  def _list(self) -> dict[str, dict[str, list[str]]]:
    top = _subdirs(self.root)
    if not top:
      raise InputError(f"image folder {self.root} has no sub-folders; expected "
                       f"{self.root}/<class>/<image> or "
                       f"{self.root}/<split>/<class>/<image>")
    if any(_images(os.path.join(self.root, d)) for d in top):
      layouts = {"train": self.root}
    elif not any(_subdirs(os.path.join(self.root, d)) for d in top):
      # Empty class folders, not split folders: they hold no folders.
      raise InputError(
          f"image folder {self.root} has no images "
          f"({', '.join(IMAGE_EXTENSIONS)}) in its class sub-folders "
          f"({', '.join(top)}); expected {self.root}/<class>/<image> or "
          f"{self.root}/<split>/<class>/<image>")
    else:
      layouts = {s: os.path.join(self.root, s) for s in top}
    files = {}
    for split, folder in layouts.items():
      files[split] = {c: _images(os.path.join(folder, c))
                      for c in _subdirs(folder)}
      if not any(files[split].values()):
        raise InputError(
            f"image folder {folder} has no images "
            f"({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders; expected "
            f"{folder}/<class>/<image>")
      empty = [c for c, paths in files[split].items() if not paths]
      if empty:
        logging.warning("Class folders without images in %s (classes with no "
                        "%s examples): %s.", folder, split, ", ".join(empty))
    return files

  def _ranges(self, split, process_index, process_count):
    sub = splits.shard(split, process_index, process_count)
    return splits.absolute_ranges(sub, self.split_sizes, self.name)

  def num_examples(self, split, process_index=0, process_count=1) -> int:
    return sum(max(0, stop - start)
               for _, start, stop in self._ranges(split, process_index,
                                                  process_count))

  def _select(self, split, process_index, process_count):
    parts = self._ranges(split, process_index, process_count)
    paths = np.concatenate([self._paths[s][a:b] for s, a, b in parts])
    labels = np.concatenate([self._labels[s][a:b] for s, a, b in parts])
    return paths.astype(str), labels

  def read(self, split, process_index=0, process_count=1) -> tf.data.Dataset:
    paths, labels = self._select(split, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices({
        "file_name": tf.constant(paths, tf.string),
        "label": tf.constant(labels, tf.int64)})
    return ds.map(lambda ex: {**ex, "image": tf.io.read_file(ex["file_name"])},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def first_undecodable(self, split, process_index=0,
                        process_count=1) -> str | None:
    """The first file of the split TF cannot decode (slow: decodes them all)."""
    for path in self._select(split, process_index, process_count)[0]:
      try:
        tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
      except tf.errors.OpError:
        return str(path)
    return None


def _subdirs(folder: str) -> list[str]:
  return sorted(e.name for e in os.scandir(folder)
                if e.is_dir() and not e.name.startswith("."))


def _images(folder: str) -> list[str]:
  names = sorted(e.name for e in os.scandir(folder)
                 if e.is_file() and not e.name.startswith("."))
  images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
  if len(images) < len(names):
    logging.warning("Ignoring %d non-image files in %s.",
                    len(names) - len(images), folder)
  return [os.path.join(folder, n) for n in images]


def _check_header(path: str):
  try:
    with open(path, "rb") as f:
      head = f.read(12)
  except OSError as e:
    raise InputError(f"cannot read image {path}: {e.strerror or e}") from None
  webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
  if not (webp or head.startswith(_MAGIC)):
    raise InputError(f"{path} is not a JPEG, PNG, GIF, BMP or WebP image "
                     f"({'empty file' if not head else 'unknown header'}); "
                     "fix or remove it")
