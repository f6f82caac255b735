r"""Check a dataset and a preprocessing string before training on them.

  python -m input_pipeline --dataset=folder:/path/to/images \
      --split='train[:90%]' --pp='decode|resize(64)|value_range(-1, 1)'

Prints the split's size, the classes and the first batch's shapes. Bad input
prints one line, `error: ...`, and exits 2, as the training entry points do.
"""
import sys

from absl import app
from absl import flags
import numpy as np

from input_pipeline import datasets
from input_pipeline import embedded
from input_pipeline import ops
from input_pipeline import streams
from input_pipeline.errors import InputError

flags.DEFINE_string("dataset", None, "TFDS name, embedded name or folder:PATH.")
flags.DEFINE_string("split", "train", "TFDS split string, e.g. train[:800].")
flags.DEFINE_string("pp", "decode", "Preprocessing, e.g. decode|resize(64).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's).")
flags.DEFINE_integer("batch_size", 8, "Examples in the batch shown.")
FLAGS = flags.FLAGS


def describe(dataset: str, split: str, pp: str, data_dir: str | None = None,
             batch_size: int = 8) -> list[str]:
  """Lines describing the split and its first preprocessed batch."""
  ops.get_preprocess_fn(pp)  # A typo fails before any data is prepared.
  source = datasets.get_source(dataset, data_dir)
  names = f" ({', '.join(source.class_names)})" if source.class_names else ""
  lines = [f"{source.name}: classes {source.num_classes}{names}",
           f"{split}: {source.num_examples(split)} examples"]
  ds, _ = streams.eval_dataset(source, split, pp, batch_size)
  batch = next(streams.iterate(ds, source, split), None)
  for key, value in sorted((batch or {}).items()):
    summary = f"{key}: {value.dtype} {value.shape}"
    if value.dtype.kind in "biuf" and value.size:
      summary += f" in [{np.min(value):g}, {np.max(value):g}]"
    lines.append(summary)
  return lines


def main(argv):
  del argv
  try:
    if not FLAGS.dataset:
      raise InputError("--dataset is required: a TFDS name, an embedded dataset ("
                       f"{', '.join(embedded.BUILDERS)}) or folder:/path/to/images")
    print("\n".join(describe(FLAGS.dataset, FLAGS.split, FLAGS.pp,
                             FLAGS.data_dir, FLAGS.batch_size)))
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)  # Bad input, as bit_jax.entry.EXIT_BAD_INPUT.


if __name__ == "__main__":
  app.run(main)
