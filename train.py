"""Upstream pretraining. `python train.py --config=configs/bit_m.py --workdir=DIR`.

Thin on purpose: flags in, one library call (`bit_jax.train.train_and_evaluate`).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from bit_jax import entry

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the exported .npz.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file[:args].", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from bit_jax import train  # After flag parsing: keeps `--help` fast.
  entry.run(lambda: train.train_and_evaluate(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
  entry.prepare()
  entry.check_config_overrides(sys.argv)
  app.run(main)
