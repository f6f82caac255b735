"""Per-process tf.data streams: shuffled endless training, exact evaluation.

Both read only this process's shard of the split (`splits.shard`) and batch to
the per-process batch size; `feeding.py` turns batches into global jax.Arrays.

Training position is the step. The stream is a pure function of
(seed, process_index, step): epoch e is the shard shuffled with a seed derived
from (seed, process, e), and each example gets a stateless `_rng` derived from
(seed, process, e, position in epoch) that the random ops consume. Resuming at
step s starts at epoch (s * batch_size) // n and skips the examples of it
already consumed (read, not decoded or preprocessed; earlier epochs are not
read at all), and yields exactly the batches an uninterrupted stream would.
So a checkpoint needs only the step. The price: epochs do not mix, and each
epoch starts by refilling the shuffle buffer.
Files are read in TFDS's fixed order; TFDS shuffled the records when it wrote
them, and the buffer reshuffles every epoch.

Evaluation visits every example of the split exactly once whatever the batch
size and process count: each process pads its shard with zero examples up to
the same number of full batches, and `"_mask"` is True for real examples.
"""
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import datasets
from input_pipeline import ops
from input_pipeline.errors import InputError

MASK = "_mask"
_RNG = "_rng"
# Errors that mean bad or missing data (not e.g. out-of-memory).
_DATA_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                tf.errors.DataLossError, tf.errors.PermissionDeniedError)


def train_dataset(source: datasets.Source, split: str, pp: str,
                  batch_size: int, *, seed: int = 0, start_step: int = 0,
                  shuffle_buffer: int = 10_000, cache: bool = False,
                  process_index: int = 0, process_count: int = 1
                  ) -> tf.data.Dataset:
  """Endless batches of `batch_size` (this process's share) from `split`.

  Args:
    source: from `datasets.get_source`.
    split: TFDS split string.
    pp: preprocessing string, see `ops`.
    batch_size: examples per batch on this process.
    seed: data seed; each process derives its own from it.
    start_step: number of batches already consumed (resume from a checkpoint).
    shuffle_buffer: examples in the shuffle buffer (capped at the shard size).
    cache: keep the raw (encoded) shard in memory after the first epoch.
    process_index, process_count: which shard to read.
  """
  n = source.num_examples(split, process_index, process_count)
  if n == 0:
    raise InputError(f"split {split!r} of {source.name} has no examples for "
                     f"process {process_index} of {process_count}")
  raw = source.read(split, process_index, process_count)
  if cache:
    raw = raw.cache()
  key = tf.constant([seed, process_index], tf.int64)
  first_epoch, offset = divmod(start_step * batch_size, n)

  def epoch(e):
    epoch_key = tf.random.experimental.stateless_fold_in(key, e)
    order_seed = tf.random.stateless_uniform(
        [], epoch_key, minval=None, maxval=None, dtype=tf.int64)
    shuffled = raw.shuffle(min(shuffle_buffer, n), seed=order_seed)
    return shuffled.enumerate().map(lambda i, ex: {
        **ex, _RNG: tf.random.experimental.stateless_fold_in(epoch_key, i)})

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
  ds = ds.skip(offset)  # Before preprocessing: skipped examples cost a read.
  ds = _preprocess(ds, pp, source, split)
  ds = ds.batch(batch_size, drop_remainder=True)
  return _finish(ds)


def eval_dataset(source: datasets.Source, split: str, pp: str, batch_size: int,
                 *, process_index: int = 0, process_count: int = 1
                 ) -> tuple[tf.data.Dataset, int]:
  """(batches, number of batches): all of this process's shard, then padding.

  Every process returns the same number of batches (set by the largest shard),
  so multi-host evaluation loops stay in lockstep.
  """
  sizes = [source.num_examples(split, p, process_count)
           for p in range(process_count)]
  num_batches = -(-max(sizes) // batch_size)
  ds = source.read(split, process_index, process_count)
  # Random ops in an eval pp still give the same result every evaluation.
  key = tf.constant([0, process_index], tf.int64)
  ds = ds.enumerate().map(lambda i, ex: {
      **ex, _RNG: tf.random.experimental.stateless_fold_in(key, i)})
  ds = _preprocess(ds, pp, source, split).map(lambda ex: {**ex, MASK: True})
  num_padding = num_batches * batch_size - sizes[process_index]
  if num_padding:
    padding = {k: tf.zeros(s.shape, s.dtype)
               for k, s in ds.element_spec.items()}
    padding[MASK] = tf.constant(False)
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(batch_size, drop_remainder=True)
  return _finish(ds), num_batches


def iterate(ds: tf.data.Dataset, source: datasets.Source, split: str,
            process_index: int = 0, process_count: int = 1
            ) -> Iterator[dict[str, np.ndarray]]:
  """numpy batches; data errors (e.g. a corrupt image) become `InputError`."""
  it = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except _DATA_ERRORS as e:
      raise _data_error(e, source, split, process_index,
                        process_count) from None
    yield batch


def _preprocess(ds: tf.data.Dataset, pp: str, source: datasets.Source,
                split: str) -> tf.data.Dataset:
  preprocess = _without_rng(ops.get_preprocess_fn(pp))
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  if all(s.shape.is_fully_defined() for s in ds.element_spec.values()):
    return ds
  # Decoding loses static shapes, which batching and eval padding want. Take
  # them from the split's first example (read apart from the shuffle buffer);
  # an example that differs stops the stream with a hint (`_data_error`).
  try:
    first = next(iter(source.read(split).take(1).map(preprocess)), None)
  except _DATA_ERRORS as e:
    raise _data_error(e, source, split, 0, 1) from None
  if first is None:
    return ds
  shapes = {k: v.shape for k, v in first.items()}
  return ds.map(lambda ex: {k: tf.ensure_shape(v, shapes[k])
                            for k, v in ex.items()})


def _without_rng(preprocess: Callable) -> Callable:
  @tf.autograph.experimental.do_not_convert
  def fn(ex):
    return {k: v for k, v in preprocess(ex).items() if k != _RNG}
  return fn


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True  # Resume and evaluation depend on the order.
  options.autotune.enabled = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _data_error(e, source, split, process_index, process_count) -> InputError:
  message = e.message.split("[[")[0]  # Drop the graph-node trailer.
  message = message.split("}}")[-1].strip()  # And the function-node prefix.
  where = f"{source.name} split {split!r}"
  finder = getattr(source, "first_undecodable", None)
  if finder is not None and ("image" in message.lower() or
                             "jpeg" in message.lower()):
    bad = finder(split, process_index, process_count)
    if bad:
      return InputError(f"cannot decode image {bad} in {where} ({message}); "
                        "fix or remove it")
  if "batch tensors with different shapes" in message or (
      "not compatible with expected shape" in message):
    message += ("; every example needs one shape after preprocessing: add "
                "resize, central_crop or a sized inception_crop to the pp")
  return InputError(f"bad data in {where}: {message}")
