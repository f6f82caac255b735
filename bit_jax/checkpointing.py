"""Orbax checkpoints of the train state, and where a run starts from.

Each checkpoint holds the train state; the input stream's position is the state's step, since
`input_pipeline.train_iterator(start_step=step)` replays exactly the batches an uninterrupted
run would see next. Saves are asynchronous and atomic (orbax writes a temporary directory and
renames it), so a killed run leaves the previous checkpoint intact.

Each checkpoint carries a `fingerprint` of its arrays' bits (in its orbax metadata), so one
that cannot be used (a data file truncated, bytes flipped: NaN, or numbers merely wrong) is
found when it is restored: `Checkpointer.restore_good` logs it in one line and falls back to
the newest one that restores whole, finite and as saved. A run (`restore_or_initialize`)
renames the damaged step to `<step>.unreadable-<time>` (`atomic_files.move_aside`: kept,
never deleted; orbax does not list it as a step); a reader of another run (`read_params`)
leaves it. With no good checkpoint left, it stops with one line and moves nothing.

A `train.py` workdir holds `checkpoints/<step>/`, `settings.json` (`bit_jax.run_settings`:
what the run was started with, its total steps included) and, once finished, `params.npz`
(the official layout). Upstream training starts from `restore_or_initialize`; fine-tuning
from `load_init` (an official .npz, or such a workdir, read through `read_params`; a workdir
of an unfinished run is used with a warning naming its step and total steps).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from bit_jax import atomic_files, models, pretrained, run_settings, zoo
from bit_jax.errors import CheckpointError, UserError, one_line

CHECKPOINT_DIR = "checkpoints"  # <workdir>/checkpoints/<step>: a train.py run's checkpoints.
EXPORT_NAME = "params.npz"  # <workdir>/params.npz: a finished train.py run's parameters.


class Checkpointer:
  """Asynchronous, keep-N checkpoints; the caller decides when to save.

  `keep=None` keeps every checkpoint; `read_only` only reads. The directory is created by
  the first `save`.
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
    else:  # The directory is made by the first save: a run that fails first leaves none.
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False,
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
    metadata = {FINGERPRINT: fingerprint(state)}  # Before the state is donated to a step.
    with self._writing(step):
      os.makedirs(self.directory, exist_ok=True)
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True,
                         custom_metadata=metadata)

  def newest_param_shapes(self) -> tuple[int | None, dict[str, tuple[int, ...]] | None]:
    """(step, `pretrained.param_shapes` of its params) of the newest checkpoint whose metadata
    reads (no array is read), or (None, None) when there is none."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return step, pretrained.param_shapes(self._manager.item_metadata(step)["params"])
      except Exception:  # pylint: disable=broad-except  # Damaged: `restore_good` says so.
        continue
    return None, None

  def restore(self, abstract_state: Any = None, step: int | None = None) -> Any:
    """Checkpoint `step` (default: the latest), as `abstract_state`'s shapes, dtypes and
    shardings (any mesh: orbax reads each device's part); without it, as saved (a dict
    tree), each array whole on this process's CPU, whatever devices wrote it."""
    step = self.latest_step() if step is None else step
    if abstract_state is None:  # Orbax would otherwise want the writer's devices.
      cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
      abstract_state = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu),
          self._manager.item_metadata(step), is_leaf=lambda x: hasattr(x, "shape"))
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def restore_good(self, abstract_state: Any = None, *, move_damaged: bool = False,
                   steps: list[int] | None = None) -> tuple[Any, int]:
    """(state, step) of the newest checkpoint (of `steps`; default: all) that restores, holds
    only finite numbers and matches its fingerprint.

    Each newer, damaged one is logged in one line, with the step used instead; with
    `move_damaged` it is renamed aside (by process 0), never deleted. `UserError` naming
    every step and what is wrong with it when none is good; then nothing is moved.
    `abstract_state` as for `restore`.
    """
    damaged = []  # (step, what is wrong)
    for step in sorted(self.all_steps() if steps is None else steps, reverse=True):
      try:
        state = self.restore(abstract_state, step)
      except Exception as e:  # pylint: disable=broad-except  # Orbax's, for any damage.
        problem = f"it does not restore ({one_line(e)})"
      else:
        problem = self._problem(step, state)
        if problem is None:
          self._set_aside(damaged, move_damaged, fallback=step)
          return state, step
      damaged.append((step, problem))
    raise UserError(
        f"no usable checkpoint in {self.directory}: "
        f"{'; '.join(f'step {s}: {p}' for s, p in damaged)}; nothing was moved: move the "
        "directory aside to start from scratch, or use another workdir")

  def _problem(self, step: int, state: Any) -> str | None:
    """What is wrong with `state`, restored from `step`, or None: finite and as saved."""
    bad = non_finite_leaf(state)
    if bad is not None:
      return f"{bad} holds NaN or Inf"
    try:
      saved = (self._manager.metadata(step).custom_metadata or {}).get(FINGERPRINT) or {}
    except Exception:  # pylint: disable=broad-except  # Unreadable metadata: nothing to check.
      saved = {}
    restored = fingerprint(state)
    for path in sorted(saved.keys() & restored.keys()):  # A checkpoint from before: none.
      if saved[path] != restored[path]:
        return f"{path} does not hold the numbers saved (its fingerprint differs)"
    return None

  def _set_aside(self, damaged: list[tuple[int, str]], move: bool, fallback: int) -> None:
    """Logs (and with `move`, renames aside) the `damaged` steps newer than `fallback`."""
    for step, problem in damaged:
      where = "left in place"
      if move:
        path = os.path.join(self.directory, str(step))
        where = (f"moved to {atomic_files.move_aside(path)}" if jax.process_index() == 0
                 else "process 0 moves it aside")
      logging.warning("Checkpoint step %d in %s is damaged (%s), %s; using step %d instead.",
                      step, self.directory, problem, where, fallback)
    if move and damaged:
      self._manager.reload()  # Forget the moved steps.

  def wait(self) -> None:
    """Blocks until the write in flight is on disk; `CheckpointError` if it failed."""
    with self._writing(self._in_flight):
      self._manager.wait_until_finished()
    self._in_flight = None

  def close(self) -> None:
    """Waits for the write in flight (`CheckpointError` if it failed); the manager is closed
    either way."""
    try:
      self.wait()
    finally:
      self._manager.close()

  @contextlib.contextmanager
  def _writing(self, step: int | None) -> Iterator[None]:
    """Orbax's failure, raised in whichever thread, as one line naming the step and path."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self._in_flight = None
      kept = sorted(int(n) for n in _listdir(self.directory) if n.isdigit())
      raise CheckpointError(
          f"writing checkpoint step {step} to {self.directory} failed: "
          f"{one_line(e)}; the checkpoints already there are intact "
          f"(steps: {', '.join(map(str, kept)) or 'none'})") from e


FINGERPRINT = "fingerprint"  # The key of `fingerprint(state)` in a step's custom metadata.


def fingerprint(tree: Any) -> dict[str, int]:
  """{leaf path: the sum of its elements' bits, as unsigned integers, modulo 2**32}.

  Integer sums are exact in any order, so the fingerprint is the same on every platform and
  sharding; a restored array that differs from the saved one in any single element differs
  in it (several changes could cancel, by a 1 in 2**32 chance).
  """
  leaves = _leaves(tree, lambda dtype: jnp.issubdtype(dtype, jnp.number))

  def bit_sum(x):
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).sum(dtype=jnp.uint32)

  sums = jax.device_get(jax.jit(lambda xs: [bit_sum(x) for x in xs])(list(leaves.values())))
  return {path: int(total) for path, total in zip(leaves, sums)}


def non_finite_leaf(tree: Any) -> str | None:
  """The path (`params/head/kernel`) of the first floating leaf of `tree` holding NaN or Inf,
  or None when all are finite."""
  leaves = _leaves(tree, lambda dtype: jnp.issubdtype(dtype, jnp.inexact))
  finite = jax.device_get(jax.jit(lambda xs: [jnp.isfinite(x).all() for x in xs])(
      list(leaves.values())))
  return next((path for path, ok in zip(leaves, finite) if not ok), None)


def _leaves(tree: Any, keep: Callable[[Any], bool]) -> dict[str, Any]:
  """{"params/head/kernel": leaf} of the array leaves whose dtype `keep` accepts."""
  leaves = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and not jax.dtypes.issubdtype(dtype, jax.dtypes.extended) and (
        keep(dtype)):
      leaves["/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                      for k in path)] = leaf
  return leaves


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
    # A damaged newer checkpoint is moved aside; the run goes on from the newest good one.
    state, step = checkpointer.restore_good(abstract_state, move_damaged=True)
    return state, f"resumed from step {step} in this workdir"
  if resume:
    other = Checkpointer(resume, read_only=True)
    try:
      if other.latest_step() is None:
        raise UserError(f"config.resume={resume!r} holds no checkpoint; expected a "
                        "directory of step folders such as <workdir>/checkpoints")
      step, found = other.newest_param_shapes()
      check_param_shapes(step, found, pretrained.param_shapes(abstract_state.params),
                         f"config.resume={resume!r}",
                         "resume from a run of the same model and num_classes")
      state, step = other.restore_good(abstract_state)  # Another run's: only read.
    finally:
      other.close()
    return state, f"resumed from step {step} of {resume}"
  if init:
    init = zoo.resolve(init)  # A release name (`BiT-M-R50x1`) is the zoo's cached file.
    params, report = pretrained.load(init, model)
    logging.info("Initialised from %s: %s", init, report)
    return init_state(params), f"initialised from {init} ({report})"
  return init_state(None), "initialised from scratch"


def read_params(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """(params on the host, step) of checkpoint `step` (default: the newest good one, see
  `Checkpointer.restore_good`; a damaged one is left in place) of a train.py run."""
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  if not os.path.isdir(directory):
    raise UserError(f"{directory} does not exist; expected the workdir of a train.py run")
  checkpointer = Checkpointer(directory, read_only=True)
  try:
    steps = checkpointer.all_steps()
    if step is None:
      if not steps:
        raise UserError(f"{directory} holds no checkpoint; expected the workdir of a "
                        "train.py run")
      state, step = checkpointer.restore_good()
    else:
      if step not in steps:
        raise UserError(f"no checkpoint for step {step} in {directory}; "
                        f"valid steps: {', '.join(map(str, steps)) or 'none'}")
      state, step = checkpointer.restore_good(steps=[step])
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
      _warn_if_unfinished(init, step)
      params, report = pretrained.fit(params, model, reset_head=True,
                                      source=f"{init} (step {step})")
      logging.info("Initialised from %s step %d: %s", init, step, report)
      return params
  params, report = pretrained.load(init, model, reset_head=True)
  logging.info("Initialised from %s: %s", init, report)
  return params


def _warn_if_unfinished(workdir: str, step: int) -> None:
  """A workdir without params.npz is an unfinished (or stopped) run: say so loudly."""
  total = run_settings.total_steps(workdir)
  of_total = f"of its {total} total steps" if total else "of an unknown number of steps"
  logging.warning(
      "%s is an UNFINISHED train.py run (no %s): initialising from its checkpoint at step "
      "%d %s. Finish it (rerun train.py on it) or pass its params.npz once it exists.",
      workdir, EXPORT_NAME, step, of_total)


def check_param_shapes(step: int | None, found: dict[str, tuple[int, ...]] | None,
                       expected: dict[str, tuple[int, ...]], source: str, remedy: str) -> None:
  """`UserError` (one line) when `found`, the parameter shapes of checkpoint `step` in `source`
  (`Checkpointer.newest_param_shapes`; None: no metadata reads, `restore_good` will say why),
  are not the config's `expected`: another model or head, which orbax would refuse step by
  step as if each checkpoint were damaged. `remedy` says what to do instead."""
  if found is not None and found != expected:
    raise UserError(f"{source} holds a {pretrained.describe(found)} run (step {step}); the "
                    f"config asks for a {pretrained.describe(expected)}: {remedy}")


def abstract_of(tree: Any) -> Any:
  """Shape/dtype/sharding stand-ins for restoring `tree` without reading it."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
