"""Where examples come from: a name -> a `Source` that reads one split.

Names:
  * any TFDS name, with optional config and version: `cifar10`,
    `imagenet2012:5.1.0`, `oxford_iiit_pet/...`; `data_dir` as in `tfds.load`;
  * the embedded, offline datasets `bit_animal_silhouettes` and `bit_digits`
    (`input_pipeline.embedded`), prepared into `data_dir` on first use;
  * `folder:/path/to/images`, one sub-folder per class (`image_folder.py`).

Splits are TFDS split strings for all three: `train`, `train[:800]`,
`train[10%:]`, `train[:80%]+test`. A source reads a split in a fixed order with
images still encoded (the `decode` op decodes them, in parallel with the rest of
the preprocessing), restricted to one process's shard (`splits.shard`).
"""
import difflib
import functools
import os
import shutil
from typing import Protocol

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import embedded
from input_pipeline import image_folder
from input_pipeline import splits
from input_pipeline.errors import InputError

FOLDER_PREFIX = "folder:"


class Source(Protocol):
  """What the streams and the loops need from a dataset.

  Its metadata, each None where the source does not know it:
    num_classes  labels are 0 .. num_classes - 1.
    class_names  the name of each label, in label order (strings).
    image_shape  (height, width, channels) of the images as stored, before any
                 preprocessing; None for a dimension that varies between images.
  """
  name: str
  num_classes: int | None
  class_names: tuple[str, ...] | None
  image_shape: tuple[int | None, int | None, int | None] | None

  def num_examples(self, split: str, process_index: int = 0,
                   process_count: int = 1) -> int: ...

  def read(self, split: str, process_index: int = 0,
           process_count: int = 1) -> tf.data.Dataset: ...


def get_source(dataset: str, data_dir: str | None = None, *,
               download: bool = True) -> Source:
  """Resolves a dataset name (see module docstring) to a `Source`.

  Args:
    dataset: TFDS name[:version], embedded name, or `folder:/path`.
    data_dir: TFDS data dir; None is TFDS's default (`$TFDS_DATA_DIR` or
      `~/tensorflow_datasets`). Ignored for folders.
    download: let TFDS download and prepare a missing dataset (needs network);
      if False a missing dataset is an error. Embedded datasets are always
      prepared, offline.
  """
  if dataset.startswith(FOLDER_PREFIX):
    return image_folder.ImageFolder(dataset.removeprefix(FOLDER_PREFIX))
  return TfdsSource(_prepared_builder(dataset, data_dir, download))


def num_examples(dataset: str | Source, split: str, data_dir: str | None = None,
                 *, process_index: int = 0, process_count: int = 1) -> int:
  """Examples in `split` (or one process's shard of it).

  From TFDS metadata when there is any; otherwise (`tfds.testing.mock_data`,
  whose `info.splits` is empty and which ignores slicing) by counting what is
  actually read, so the answer always matches the data.
  """
  if isinstance(dataset, str):
    dataset = get_source(dataset, data_dir)
  return dataset.num_examples(split, process_index, process_count)


def check_split(dataset: str | Source, split: str,
                data_dir: str | None = None) -> int:
  """The number of examples in `split`, read from metadata where there is any.

  Cheap (reads no example of TFDS data that has metadata): entry points call it
  for every split before any training, so a split missing from a folder
  dataset fails at once. `InputError` (one line naming the split, the dataset
  and its splits) if the split is not valid or holds no example.
  """
  source = get_source(dataset, data_dir) if isinstance(dataset, str) else dataset
  n = source.num_examples(split)
  if n == 0:
    sizes = sorted(_split_sizes(source).items())
    valid = ", ".join(f"{name} ({size})" for name, size in sizes)
    raise InputError(f"split {split!r} of {source.name} holds no examples"
                     f"{f'; its splits: {valid}' if valid else ''}; "
                     f"{splits.HELP}")
  return n


def _split_sizes(source: Source) -> dict[str, int]:
  sizes = getattr(source, "split_sizes", None)  # Image folders.
  if sizes is None and hasattr(source, "builder"):
    sizes = {name: info.num_examples
             for name, info in source.builder.info.splits.items()}
  return dict(sizes or {})


def count(ds: tf.data.Dataset) -> int:
  return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


class TfdsSource:
  """A prepared TFDS builder, or one mocked by `tfds.testing.mock_data`
  (which ignores slicing, so there every process shard is the whole split)."""

  def __init__(self, builder: tfds.core.DatasetBuilder):
    self.builder = builder
    self.name = builder.name
    label, image = (_feature(builder.info.features, key) for key in ("label", "image"))
    self.num_classes = getattr(label, "num_classes", None)
    names = getattr(label, "names", None)  # A ClassLabel's; ["0", ...] when it has none.
    self.class_names = tuple(map(str, names)) if names else None
    shape = getattr(image, "shape", None)
    self.image_shape = tuple(shape) if shape is not None and len(shape) == 3 else None

  def _split_info(self, split: str, process_index: int, process_count: int):
    """Split metadata, or None when there is none (mock data)."""
    infos = self.builder.info.splits
    if not infos:
      return None
    try:
      return infos[splits.shard(split, process_index, process_count)]
    except (KeyError, ValueError, AssertionError) as e:
      raise splits.bad_split(split, self.name, infos, e) from None

  def num_examples(self, split, process_index=0, process_count=1) -> int:
    info = self._split_info(split, process_index, process_count)
    if info is not None:
      return info.num_examples
    logging.warning("%s has no split metadata (mock data?): counting %s.",
                    self.name, split)
    return count(self.read(split, process_index, process_count))

  def read(self, split, process_index=0, process_count=1) -> tf.data.Dataset:
    self._split_info(split, process_index, process_count)  # Validates.
    features = self.builder.info.features
    skip = {k: tfds.decode.SkipDecoding() for k, f in features.items()
            if isinstance(f, tfds.features.Image)}
    # shuffle_files=False and TFDS's deterministic interleave: a fixed order,
    # which the train stream's (seed, step) resume relies on.
    return self.builder.as_dataset(
        split=splits.shard(split, process_index, process_count),
        shuffle_files=False, decoders=skip)


def _feature(features, key: str):
  try:
    return features[key]
  except (KeyError, TypeError):
    return None


def _prepared_builder(name: str, data_dir, download: bool):
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise InputError(_unknown_dataset(name)) from None
  except (ValueError, AssertionError) as e:  # e.g. an unknown version.
    raise InputError(
        f"cannot load dataset {name!r}: {_first_line(e)}") from None
  if builder.is_prepared():
    return builder
  if builder.name in embedded.BUILDERS:
    return _prepare_embedded(builder, name, data_dir)
  if not download:
    raise InputError(
        f"TFDS dataset {name} is not prepared in {builder.data_dir_root}; run "
        f"`tfds build {name} --data_dir={builder.data_dir_root}` or allow "
        "downloads")
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    # Network, manual-download and disk errors: all say what to fix.
    raise InputError(f"could not download and prepare TFDS dataset {name} in "
                     f"{builder.data_dir_root}: {_first_line(e)}") from None
  return builder


def _prepare_embedded(builder, name: str, data_dir):
  """Offline; returns the prepared builder. TFDS writes into incomplete.* and renames it on
  success, so when several processes (the hosts of one run) prepare the same data at once,
  all but the first rename fail: they use what the first one wrote.
  """
  top = os.path.join(builder.data_dir_root, builder.name)
  existed = os.path.exists(top)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False))
    return builder
  except Exception as e:  # pylint: disable=broad-except
    prepared_meanwhile = tfds.builder(name, data_dir=data_dir)
    if prepared_meanwhile.is_prepared():
      return prepared_meanwhile
    # TFDS removed its incomplete.* folder; remove the empty parents too.
    if not existed and not any(files for _, _, files in os.walk(top)):
      shutil.rmtree(top, ignore_errors=True)
    if isinstance(e, InputError):
      raise
    raise InputError(f"could not prepare {builder.name} in "
                     f"{builder.data_dir_root}: {_first_line(e)}") from None


def _unknown_dataset(name: str) -> str:
  close = difflib.get_close_matches(
      name.split(":")[0], [*embedded.BUILDERS, *_tfds_names()], n=3)
  hint = f" (did you mean {', '.join(close)}?)" if close else ""
  return (f"unknown dataset {name!r}{hint}; valid: the embedded "
          f"{', '.join(embedded.BUILDERS)}, {FOLDER_PREFIX}/path/to/images "
          "(one sub-folder per class), or a TFDS name as listed by "
          "tfds.list_builders(), e.g. cifar10, oxford_iiit_pet")


@functools.cache
def _tfds_names() -> tuple[str, ...]:
  return tuple(tfds.list_builders(with_community_datasets=False))


def _first_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[0] if lines else type(e).__name__
