"""The training loop of upstream pretraining (`bit_jax.train`) and fine-tuning
(`bit_jax.finetune`): steps, log cadence, divergence, checkpoints and preemption, written once.

    state = loop.run(state, train_step, batches, start_step=s, cadence=cadence,
                     checkpointer=checkpointer, name="training", remedy="lower the lr",
                     on_log=write_metrics, after_step=run_evaluators)

At every step it logs or saves, one host transfer of the step's metrics, and a diverged
(NaN/Inf) state stops the run before it is logged on or saved (`divergence`). SIGTERM or
Ctrl-C (`preemption`) saves the step just taken, the last one too, and raises
`errors.Preempted` (exit 143): a rerun resumes there. The checkpointer is closed and the
signal handlers put back however the loop ends.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
from absl import logging

from bit_jax import checkpointing, distributed
from bit_jax.errors import EXIT_PREEMPTED, Preempted
from bit_jax.loop import divergence, preemption


@dataclasses.dataclass(frozen=True)
class Cadence:
  """How often the loop does what, in steps."""
  total_steps: int
  log_every_steps: int  # Also how often a diverged state is caught.
  checkpoint_every_steps: int  # 0: only when stopped (and at the end, with `save_last`).
  preemption_check_every_steps: int  # Multi-host: the hosts agree on stopping this often.
  save_last: bool = True  # Save the last step (else only if stopped there).


def run(state: Any, train_step: Callable[[Any, Any], tuple[Any, Any]], batches: Iterator[Any],
        *, start_step: int, cadence: Cadence,
        checkpointer: checkpointing.Checkpointer | None, name: str, remedy: str,
        on_log: Callable[[int, dict[str, Any]], None] = lambda step, metrics: None,
        after_step: Callable[[int, Any], None] = lambda step, state: None) -> Any:
  """The state after `train_step` on `batches` from `start_step` to `cadence.total_steps`.

  `on_log(step, host metrics)` at the log steps, after the divergence check;
  `after_step(step, state)` after every step, before its checkpoint. Without a checkpointer
  nothing is saved and signals keep their handlers. `name` and `remedy` go into the
  divergence line ("training diverged: ...; lower the learning rate").
  """
  preempted = preemption.PreemptionFlag() if checkpointer else None
  stopped_at = None
  try:
    for step in range(start_step + 1, cadence.total_steps + 1):
      state, step_metrics = train_step(state, next(batches))
      is_last = step == cadence.total_steps
      log = step % cadence.log_every_steps == 0 or is_last
      stop = _agreed_stop(preempted, step, cadence, is_last)
      due = cadence.save_last if is_last else (
          cadence.checkpoint_every_steps > 0 and step % cadence.checkpoint_every_steps == 0)
      save = checkpointer is not None and (stop or due)
      if log or save:
        host_metrics = jax.device_get(step_metrics)  # One host transfer.
        divergence.check(host_metrics, step, checkpointer, start_step, run=name,
                         remedy=remedy)
        if log:
          on_log(step, host_metrics)
      after_step(step, state)
      if save:
        checkpointer.save(step, state)
      if stop:
        stopped_at = step
        break
  finally:
    if preempted is not None:
      preempted.restore()
    if checkpointer is not None:
      checkpointer.close()  # Also after an error: a write in flight finishes whole.
  if stopped_at is not None:
    logging.warning("%s received: saved step %d of %d (%s) in %s; exiting with status %d. "
                    "Rerun the same command to resume from step %d.",
                    preempted.signal_name or "SIGTERM", stopped_at, cadence.total_steps, name,
                    checkpointer.directory, EXIT_PREEMPTED, stopped_at)
    raise Preempted()
  return state


def _agreed_stop(preempted: preemption.PreemptionFlag | None, step: int, cadence: Cadence,
                 is_last: bool) -> bool:
  """Whether to save and stop after `step`: a signal arrived here, or, multi-host, on any
  host (a blocking collective, so only every `preemption_check_every_steps` and at the
  last step; another host's signal stops this one without its own)."""
  stop = bool(preempted)  # Read once: a signal after this still saves first.
  if preempted is not None and jax.process_count() > 1:
    agree = step % cadence.preemption_check_every_steps == 0 or is_last
    stop = agree and distributed.on_any_process(stop)
  return stop
