"""Orbax checkpoints of the train state, and where a run starts from.

Each checkpoint holds the train state; the input stream's position is the state's step, since
`input_pipeline.train_iterator(start_step=step)` replays exactly the batches an uninterrupted
run would see next. Saves are asynchronous and atomic (orbax writes a temporary directory and
renames it), so a killed run leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging

from bit_jax import models, pretrained
from bit_jax.errors import UserError


class Checkpointer:
  """Asynchronous, keep-N checkpoints; the caller decides when to save."""

  def __init__(self, directory: str, *, keep: int, use_async: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=use_async))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def restore_or_initialize(checkpointer: Checkpointer, abstract_state: Any,
                          init_state: Callable[[Any], Any], model: models.ResNetV2,
                          config: Any) -> tuple[Any, str]:
  """The state a run starts from, and a line saying where it came from.

  Order: a checkpoint in the workdir (this run, resumed) -> `config.resume` (another run's
  checkpoint directory) -> `config.init` (parameters from an official .npz; optimizer fresh)
  -> from scratch. `init_state(params_or_None)` builds a fresh state.
  """
  if checkpointer.latest_step() is not None:
    step = checkpointer.latest_step()
    return checkpointer.restore(abstract_state), f"resumed from step {step} in this workdir"
  if config.get("resume"):
    other = Checkpointer(config.resume, keep=1, use_async=False)
    if other.latest_step() is None:
      raise UserError(f"config.resume={config.resume!r} holds no checkpoint; expected a "
                      "directory of step folders such as <workdir>/checkpoints")
    state = other.restore(abstract_state)
    other.close()
    return state, f"resumed from step {other.latest_step()} of {config.resume}"
  if config.get("init"):
    params, report = pretrained.load(config.init, model)
    logging.info("Initialised from %s: %s", config.init, report)
    return init_state(params), f"initialised from {config.init} ({report})"
  return init_state(None), "initialised from scratch"


def abstract_of(tree: Any) -> Any:
  """Shape/dtype/sharding stand-ins for restoring `tree` without reading it."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
