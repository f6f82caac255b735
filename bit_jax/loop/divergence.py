"""Stopping a training loop whose loss or parameters became NaN/Inf, before that state is saved.

`bit_jax.loop.run` calls `check` at every step it logs or saves.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bit_jax import checkpointing
from bit_jax.errors import NonFiniteLossError


def check(step_metrics: Mapping[str, Any], step: int,
          checkpointer: checkpointing.Checkpointer | None, start_step: int, *, run: str,
          remedy: str) -> None:
  """`NonFiniteLossError` (one line: the step, what `checkpointer` keeps, `remedy`) unless
  `step_metrics`' loss and param_norm are finite.

  Both are needed: the loss is that of the parameters before the step's update, the norm of
  those after it, which an exploding update makes infinite while the loss is still finite.
  """
  loss, param_norm = (float(step_metrics[k]) for k in ("loss", "param_norm"))
  if math.isfinite(loss) and math.isfinite(param_norm):
    return
  raise NonFiniteLossError(
      f"{run} diverged: loss {loss} (parameter norm {param_norm}) at step {step}; "
      f"{_kept(checkpointer, start_step)}; {remedy}")


def _kept(checkpointer: checkpointing.Checkpointer | None, start_step: int) -> str:
  """What a diverged run leaves behind, for its error line."""
  if checkpointer is None:
    return "nothing was saved"
  checkpointer.wait()  # A save in flight finishes whole.
  latest = checkpointer.latest_step()
  if latest is None:
    return f"no checkpoint was written to {checkpointer.directory}"
  if latest > start_step:  # Saved by this run, after the same check passed.
    return f"the last checkpoint (step {latest}) in {checkpointer.directory} is untouched"
  # Loaded finite, but only the next steps could show that it was sound.
  return (f"the checkpoint (step {latest}) in {checkpointer.directory} that this run resumed "
          "from is untouched (it loaded finite and as saved; if a rerun diverges right after "
          "it again, move it aside to resume from an earlier one)")
