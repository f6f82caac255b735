"""`bit_jax.entry`: what a run's exception makes its process exit with."""
import subprocess
import sys

import pytest

from bit_jax import entry, errors
from tests import faults


@pytest.mark.parametrize("error, status", [
    (errors.UserError("bad"), entry.EXIT_BAD_INPUT),
    (errors.NonFiniteLossError("nan"), entry.EXIT_FAILED),
    (errors.CheckpointError("full"), entry.EXIT_FAILED),
    (errors.Preempted(), entry.EXIT_PREEMPTED),
    (RuntimeError("a bug"), None),  # Keeps its traceback.
])
def test_exit_status(error, status):
  assert entry.exit_status(error) == status


@pytest.mark.parametrize("raised, status", [
    ("errors.UserError('no such split')", entry.EXIT_BAD_INPUT),
    ("errors.NonFiniteLossError('diverged')", entry.EXIT_FAILED),
    ("errors.CheckpointError('disk full')", entry.EXIT_FAILED),
])
def test_run_ends_on_one_error_line_and_the_status(raised, status):
  code = f"from bit_jax import entry, errors\ndef job(): raise {raised}\nentry.run(job)"
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=faults.ROOT)
  assert done.returncode == status
  assert done.stderr.strip().splitlines() == [f"error: {raised.split(chr(39))[1]}"]
