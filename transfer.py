"""Transfer. `python transfer.py --config=configs/transfer.py:model=...,dataset=... --workdir=DIR`.

Thin on purpose: flags in, one library call (`bit_jax.transfer.finetune_and_evaluate`).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from bit_jax import entry

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for results.json and TensorBoard events.")
config_flags.DEFINE_config_file("config", None, "configs/transfer.py[:args].",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from bit_jax import transfer  # After flag parsing: keeps `--help` fast.
  entry.run(lambda: transfer.finetune_and_evaluate(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
  entry.prepare()
  entry.check_config_overrides(sys.argv)
  app.run(main)
