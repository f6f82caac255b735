"""Input pipeline: TFDS / image folders / embedded data -> global jax.Arrays.

Follow one batch through the modules in this order:
  datasets.py   a name -> a Source: TFDS (`cifar10`, `imagenet2012:5.1.0`,
                `data_dir`), the embedded offline datasets (`embedded/`:
                `bit_animal_silhouettes` upstream, `bit_digits` downstream), or
                `folder:/path` (`image_folder.py`, one sub-folder per class).
                Also Sources built directly: `image_files.py` (a list of image
                files, for `bit_jax.predict`) and `indexed.py` (any source
                with each example's position in the split, `_index`).
  splits.py     TFDS split strings (`train[:800]`, `train[10%:]+test`) and
                per-process shards.
  ops.py        preprocessing ops from a string, e.g. `"decode|
                inception_crop(224)|flip_lr|value_range(-1,1)|onehot(1000)"`.
  streams.py    per-process tf.data: shuffled endless training that resumes
                exactly from a step; evaluation padded and masked.
  feeding.py    per-process numpy -> global jax.Array sharded P("data").
MixUp, which mixes batches on device inside the train step, is `bit_jax.mixup`.
Bad input anywhere raises `InputError` (a ValueError) with a one-line message
naming the problem and the valid choices; entry points print it, exit 1.
`python -m input_pipeline --dataset=... --split=... --pp=...` checks a dataset
and a pp string (split size, classes, first batch) before a run.

Public API (what the training and transfer loops call):
  get_source(dataset, data_dir=None, *, download=True) -> Source
      Also its metadata: num_classes, class_names, image_shape (`Source`).
  num_examples(dataset, split, data_dir=None, *, process_index=0,
               process_count=1) -> int
  check_split(dataset, split, data_dir=None) -> int
      Its size; InputError if the split is missing or empty. Call it for
      every split a run reads, before training.
  train_iterator(dataset, split, pp, global_batch_size, mesh, *, seed=0,
                 start_step=0, data_dir=None, shuffle_buffer=10_000,
                 cache=False, prefetch=2) -> Iterator[dict[str, jax.Array]]
      Endless. Save nothing but the step; resume with start_step=step.
  eval_iterator(dataset, split, pp, global_batch_size, mesh, *, data_dir=None,
                prefetch=2) -> EvalBatches
      Re-iterable, len() batches, every example exactly once, "_mask" marks
      real examples.
  get_preprocess_fn(pp) -> fn(example dict) -> example dict; OPS, register
  train_dataset / eval_dataset: the per-process tf.data streams underneath,
      with explicit process_index / process_count (to simulate hosts).
`dataset` is a name string or a Source. Batches are dicts: "image" (as the pp
leaves it, e.g. float32 [b, h, w, 3]), "label" (int, or one-hot float after
`onehot`), plus whatever else the pp keeps.
"""
from input_pipeline.datasets import check_split
from input_pipeline.datasets import get_source
from input_pipeline.datasets import num_examples
from input_pipeline.datasets import Source
from input_pipeline.errors import InputError
from input_pipeline.feeding import eval_iterator
from input_pipeline.feeding import EvalBatches
from input_pipeline.feeding import train_iterator
from input_pipeline.ops import get_preprocess_fn
from input_pipeline.ops import OPS
from input_pipeline.ops import register
from input_pipeline.streams import eval_dataset
from input_pipeline.streams import MASK
from input_pipeline.streams import train_dataset

__all__ = ["EvalBatches", "InputError", "MASK", "OPS", "Source", "check_split",
           "eval_dataset", "eval_iterator", "get_preprocess_fn", "get_source", "num_examples",
           "register", "train_dataset", "train_iterator"]
