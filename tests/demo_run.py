"""train.py's run of the demo config with overrides, after an injected fault
(`tests.faults.FAULTS`): the program `faults.run_demo` starts.

    python -m tests.demo_run WORKDIR OVERRIDES [--fault=NAME:STEP]

OVERRIDES is a dict literal (tuples stay tuples, as config fields need).
"""
import ast
import logging
import sys

logging.basicConfig(level=logging.INFO)  # Before absl is imported: its records reach stderr.

from bit_jax import entry, train  # noqa: E402  # pylint: disable=wrong-import-position
from configs import demo  # noqa: E402  # pylint: disable=wrong-import-position
from tests import faults  # noqa: E402  # pylint: disable=wrong-import-position


def main(workdir, overrides, *options):
  for option in options:
    name, step = option.removeprefix("--fault=").split(":")
    faults.FAULTS[name](int(step))
  config = demo.get_config()
  config.update(ast.literal_eval(overrides))
  entry.run(lambda: train.train_and_evaluate(config, workdir))


if __name__ == "__main__":
  main(*sys.argv[1:])
