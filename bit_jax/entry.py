"""What every command-line entry point does around its one library call."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable, Sequence

from bit_jax.errors import EXIT_PREEMPTED  # A preempted run's status (errors.Preempted).

EXIT_FAILED = 1  # The run failed: it diverged, or a checkpoint could not be written.
EXIT_BAD_INPUT = 2  # A bad config, flag, file or workdir; nothing was written.


def prepare() -> None:
  """Before absl parses flags: quiet TensorFlow and keep it off the accelerators."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import logging
  # Orbax logs every file it writes at INFO; keep its warnings, drop the chatter.
  logging.getLogger("absl").addFilter(
      lambda record: record.levelno >= logging.WARNING or "orbax" not in record.pathname)
  import tensorflow as tf
  # tf.data only preprocesses; JAX owns every GPU's memory.
  tf.config.set_visible_devices([], "GPU")


def check_config_overrides(argv: Sequence[str]) -> None:
  """Fails with one line if `--config=FILE:ARGS` or a `--config.KEY=...` is not valid.

  ml_collections would raise a bare AttributeError from inside flag parsing instead.
  """
  path_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv
               if a.startswith("--config.")]
  if not path_arg:
    return
  path, _, arg = path_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_config_for_checking", path)
  if spec is None or not os.path.isfile(path):
    _fail(f"config file {path!r} does not exist; expected e.g. configs/demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    config = module.get_config(arg or None)
  except ValueError as e:  # UserError from a bad `file.py:key=value` argument.
    _fail(str(e))
  for key in overrides:
    node = config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        _fail(f"unknown config key {key!r} in --config.{key}; valid keys: "
              f"{', '.join(sorted(node.keys() if hasattr(node, 'keys') else []))}")
      node = node[part]


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def exit_status(error: BaseException) -> int | None:
  """The status a run that raised `error` exits with; None for a bug (it keeps its traceback).

  Bad input 2, a diverged run or a failed checkpoint write 1, a preempted run 143 (its own
  `SystemExit`)."""
  from bit_jax.errors import CheckpointError, NonFiniteLossError, UserError
  if isinstance(error, SystemExit):
    return error.code
  if isinstance(error, UserError):
    return EXIT_BAD_INPUT
  if isinstance(error, (NonFiniteLossError, CheckpointError)):
    return EXIT_FAILED
  return None


def run(job: Callable[[], object]) -> None:
  """Runs `job`; bad user input, a diverged run and a failed checkpoint write end with one
  line and their `exit_status` (a preempted run raises `errors.Preempted`, its own exit)."""
  from bit_jax.errors import CheckpointError
  try:
    job()
  except Exception as e:  # pylint: disable=broad-except
    status = exit_status(e)
    if status is None:
      raise
    print(f"error: {e}", file=sys.stderr)
    if isinstance(e, CheckpointError):
      # After a failed write orbax's writer threads may never finish, and the interpreter
      # would wait for them forever at exit: leave without joining them.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)
    sys.exit(status)
