"""Orbax checkpoints of the train state, and where a run starts from.

Each checkpoint holds the train state; the input stream's position is the state's step, since
`input_pipeline.train_iterator(start_step=step)` replays exactly the batches an uninterrupted
run would see next. Saves are asynchronous and atomic (orbax writes a temporary directory and
renames it), so a killed run leaves the previous checkpoint intact.

A `train.py` workdir holds `checkpoints/<step>/` and, once finished, `params.npz` (the
official layout). Upstream training starts from `restore_or_initialize`; fine-tuning from
`load_init` (an official .npz, or such a workdir, read through `read_params`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import jax
import orbax.checkpoint as ocp
from absl import logging

from bit_jax import models, pretrained, zoo
from bit_jax.errors import CheckpointError, UserError

CHECKPOINT_DIR = "checkpoints"  # <workdir>/checkpoints/<step>: a train.py run's checkpoints.
EXPORT_NAME = "params.npz"  # <workdir>/params.npz: a finished train.py run's parameters.


class Checkpointer:
  """Asynchronous, keep-N checkpoints; the caller decides when to save.

  `keep=None` keeps every checkpoint; `read_only` only reads (and creates no directory).
  """

  def __init__(self, directory: str, *, keep: int | None = None, use_async: bool = True,
               read_only: bool = False):
    if keep is not None and keep < 1:  # Orbax would delete every checkpoint, silently.
      raise UserError(f"keep_checkpoints={keep} is not valid: it must be >= 1")
    self.directory = os.path.abspath(directory)
    self._in_flight = None  # The step whose asynchronous write may still be running.
    if read_only:  # Orbax warns about (and overrides) any option that would write.
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=use_async)
    # The handler named up front, so that a manager that has not saved can read metadata.
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts writing `state` as `step`; `CheckpointError` if this or the previous write
    failed (orbax waits for the previous one here in any case)."""
    self.wait()
    self._in_flight = step
    with self._writing(step):
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def param_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """`{"block1/unit01/conv1/kernel": shape, ...}` of checkpoint `step`, from its metadata
    (no array is read)."""
    params = self._manager.item_metadata(step)["params"]
    leaves = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in leaves}

  def restore(self, abstract_state: Any = None, step: int | None = None) -> Any:
    """Checkpoint `step` (default: the latest), as `abstract_state`'s shapes, dtypes and
    shardings; without it, as saved (a dict tree)."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def wait(self) -> None:
    """Blocks until the write in flight is on disk; `CheckpointError` if it failed."""
    with self._writing(self._in_flight):
      self._manager.wait_until_finished()
    self._in_flight = None

  def close(self) -> None:
    self.wait()
    self._manager.close()

  @contextlib.contextmanager
  def _writing(self, step: int | None) -> Iterator[None]:
    """Orbax's failure, raised in whichever thread, as one line naming the step and path."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self._in_flight = None
      reason = (str(e).strip().splitlines() or [""])[0]
      kept = sorted(int(n) for n in _listdir(self.directory) if n.isdigit())
      raise CheckpointError(
          f"writing checkpoint step {step} to {self.directory} failed: "
          f"{type(e).__name__}: {reason}; the checkpoints already there are intact "
          f"(steps: {', '.join(map(str, kept)) or 'none'})") from e


def _listdir(directory: str) -> list[str]:
  try:
    return os.listdir(directory)
  except OSError:
    return []


def restore_or_initialize(checkpointer: Checkpointer, abstract_state: Any,
                          init_state: Callable[[Any], Any], model: models.ResNetV2, *,
                          resume: str, init: str) -> tuple[Any, str]:
  """The state a run starts from, and a line saying where it came from.

  Order: a checkpoint in the workdir (this run, resumed) -> `resume` (another run's
  checkpoint directory, `config.resume`) -> `init` (parameters from an official .npz,
  `config.init`; optimizer fresh) -> from scratch. `init_state(params_or_None)` builds a
  fresh state.
  """
  if checkpointer.latest_step() is not None:
    step = checkpointer.latest_step()
    return checkpointer.restore(abstract_state), f"resumed from step {step} in this workdir"
  if resume:
    other = Checkpointer(resume, read_only=True)
    if other.latest_step() is None:
      raise UserError(f"config.resume={resume!r} holds no checkpoint; expected a "
                      "directory of step folders such as <workdir>/checkpoints")
    state = other.restore(abstract_state)
    other.close()
    return state, f"resumed from step {other.latest_step()} of {resume}"
  if init:
    init = zoo.resolve(init)  # A release name (`BiT-M-R50x1`) is the zoo's cached file.
    params, report = pretrained.load(init, model)
    logging.info("Initialised from %s: %s", init, report)
    return init_state(params), f"initialised from {init} ({report})"
  return init_state(None), "initialised from scratch"


def read_params(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """(params on the host, step) of checkpoint `step` (default: latest) of a train.py run."""
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  if not os.path.isdir(directory):
    raise UserError(f"{directory} does not exist; expected the workdir of a train.py run")
  checkpointer = Checkpointer(directory, read_only=True)
  try:
    steps = checkpointer.all_steps()
    step = checkpointer.latest_step() if step is None else step
    if step not in steps:
      raise UserError(f"no checkpoint for step {step} in {directory}; "
                      f"valid steps: {', '.join(map(str, steps)) or 'none'}")
    state = checkpointer.restore(step=step)
  finally:
    checkpointer.close()
  return jax.device_get(state["params"]), step


def load_init(init: str, model: models.ResNetV2) -> dict[str, Any] | None:
  """Pretrained params fitted to `model` (head zeroed), or None for from-scratch runs.

  `init` is an official .npz, a release name downloaded by `bit_jax.zoo`, or the workdir of
  a `train.py` run (its exported params.npz, else its latest checkpoint).
  """
  if not init:
    return None
  init = zoo.resolve(init)  # A release name (`BiT-M-R50x1`) is the zoo's cached file.
  if os.path.isdir(init):
    exported = os.path.join(init, EXPORT_NAME)
    if os.path.isfile(exported):
      init = exported
    else:
      params, step = read_params(init)
      params, report = pretrained.fit(params, model, reset_head=True,
                                      source=f"{init} (step {step})")
      logging.info("Initialised from %s step %d: %s", init, step, report)
      return params
  params, report = pretrained.load(init, model, reset_head=True)
  logging.info("Initialised from %s: %s", init, report)
  return params


def abstract_of(tree: Any) -> Any:
  """Shape/dtype/sharding stand-ins for restoring `tree` without reading it."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
