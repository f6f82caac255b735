"""Upstream pretraining: `train_and_evaluate(config, workdir)`.

Follow one batch: `input_pipeline.train_iterator` shards it on the mesh's `data` axis ->
`train_step` (jit: state replicated and donated) -> metrics to TensorBoard and the log ->
`Checkpointer` every `checkpoint_every_steps` -> at the end, the official .npz export.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.sharding import NamedSharding, PartitionSpec as P

import input_pipeline
from bit_jax import (checkpointing, distributed, entry, host_allocator, losses, models, npz,
                     optim, pretrained)
from bit_jax import train_step as train_step_lib
from bit_jax.errors import NonFiniteLossError, Preempted, UserError


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config.model` on `config.dataset` in `workdir`; returns the final eval metrics."""
  distributed.maybe_initialize(config)
  mesh = distributed.data_mesh()
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  host_allocator.log_advice(jax.default_backend())

  model = models.get_model(config.model, num_classes=config.num_classes, dtype=config.dtype,
                           remat=config.remat, kernels=config.kernels)
  num_train = config.num_train_examples or input_pipeline.num_examples(
      config.dataset, config.train_split, data_dir=config.data_dir)
  _check_config(config, workdir, model, num_train)  # Before anything is written.
  steps_per_epoch = num_train / config.batch_size
  total_steps = _total_steps(config, num_train)
  schedule = optim.make_schedule(config, steps_per_epoch, total_steps)
  optimizer = optim.make_optimizer(config, schedule)
  loss_fn = losses.get_loss(config.loss)

  image_shape = (1, config.image_size, config.image_size, 3)

  @functools.partial(jax.jit, out_shardings=replicated)
  def init_state(params):
    if params is None:
      params = model.init(jax.random.key(config.seed), jnp.zeros(image_shape))["params"]
    return train_step_lib.create_train_state(params, optimizer)

  abstract_state = jax.eval_shape(lambda: init_state.__wrapped__(None))
  abstract_state = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract_state)

  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, checkpointing.CHECKPOINT_DIR), keep=config.keep_checkpoints,
      use_async=config.async_checkpoints)
  state, origin = checkpointing.restore_or_initialize(
      checkpointer, abstract_state, init_state, model, resume=config.resume, init=config.init)
  start_step = int(state.step)
  logging.info("Starting at step %d of %d: %s", start_step, total_steps, origin)

  train_step = jax.jit(
      train_step_lib.make_train_step(model, optimizer, loss_fn, schedule,
                                     accum_steps=config.accum_steps),
      in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
      donate_argnums=0)
  eval_model, _ = models.hoist_weight_standardization(model)  # Standardized once per pass.
  eval_step = jax.jit(train_step_lib.make_eval_step(eval_model, loss_fn),
                      in_shardings=(replicated, sharded), out_shardings=replicated)

  train_batches = input_pipeline.train_iterator(
      config.dataset, config.train_split, config.pp_train, config.batch_size, mesh,
      seed=config.seed, start_step=start_step, data_dir=config.data_dir,
      shuffle_buffer=config.shuffle_buffer)
  eval_batches = input_pipeline.eval_iterator(
      config.dataset, config.eval_split, config.pp_eval, config.eval_batch_size, mesh,
      data_dir=config.data_dir)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  preempted = _PreemptionFlag()

  def evaluate(step):
    sums = None
    _, eval_params = models.for_inference(model, state.params)
    for batch in eval_batches:
      counts = eval_step(eval_params, batch)
      sums = counts if sums is None else jax.tree.map(jnp.add, sums, counts)
    sums = jax.device_get(sums)
    results = {f"eval/{k}": float(sums[k] / sums["count"]) for k in ("top1", "top5", "loss")}
    writer.write_scalars(step, results)
    return results

  results = {}
  step = start_step
  timer = (time.perf_counter(), step)
  stopped_by = None  # The signal that stopped the run early, once its checkpoint is saved.
  while step < total_steps:
    batch = next(train_batches)
    state, step_metrics = train_step(state, batch)
    step += 1
    progress(step)
    is_last = step == total_steps
    log = step % config.log_every_steps == 0 or is_last
    stop = bool(preempted)  # Read once: a SIGTERM between save and exit still saves first.
    if jax.process_count() > 1:  # Hosts agree, every preemption_check_every_steps steps.
      stop = (step % config.preemption_check_every_steps == 0 or is_last) and (
          distributed.on_any_process(stop))
    save = step % config.checkpoint_every_steps == 0 or is_last or stop
    if log or save:
      # One host transfer per such step; a diverged state is never logged on or saved.
      host_metrics = jax.device_get(step_metrics)
      _check_finite(host_metrics, step, checkpointer)
    if log:
      scalars = {f"train/{k}": float(v) for k, v in host_metrics.items()}
      elapsed, steps_done = time.perf_counter() - timer[0], step - timer[1]
      scalars["train/images_per_sec_per_device"] = (
          steps_done * config.batch_size / elapsed / jax.device_count())
      timer = (time.perf_counter(), step)
      writer.write_scalars(step, scalars)
    if step % config.eval_every_steps == 0 or is_last:
      results = evaluate(step)
    if save:
      checkpointer.save(step, state)
    if stop and not is_last:
      # Another host's SIGTERM when this one got none (hosts agree on stopping).
      stopped_by = preempted.signal_name or "SIGTERM"
      break
  preempted.restore()
  checkpointer.close()  # Waits for the last write; CheckpointError if it failed.
  writer.flush()
  if stopped_by:
    logging.warning("%s received: saved step %d of %d in %s; exiting with status %d. "
                    "Rerun the same command to resume from step %d.", stopped_by, step,
                    total_steps, checkpointer.directory, entry.EXIT_PREEMPTED, step)
    raise Preempted(entry.EXIT_PREEMPTED)
  if step == total_steps and jax.process_index() == 0:
    npz.save(jax.device_get(state.params), os.path.join(workdir, checkpointing.EXPORT_NAME))
  return results


# Fields that must be integers >= 1, and what each counts.
_POSITIVE_FIELDS = {
    "batch_size": "the global batch", "accum_steps": "micro-batches per step",
    "eval_batch_size": "the global eval batch", "log_every_steps": "steps between logs",
    "eval_every_steps": "steps between evaluations",
    "checkpoint_every_steps": "steps between checkpoints",
    "keep_checkpoints": "checkpoints kept; 0 would delete them all",
    "preemption_check_every_steps": "steps between the hosts' preemption checks",
}


def _check_config(config: ml_collections.ConfigDict, workdir: str, model: models.ResNetV2,
                  num_train: int) -> None:
  """Every check of the config and the workdir, before anything is written; `UserError`
  (one line naming the field and what is valid) on the first that fails."""
  for field, meaning in _POSITIVE_FIELDS.items():
    value = config[field]
    if not isinstance(value, int) or value < 1:
      raise UserError(f"{field}={value!r} is not valid: it must be an integer >= 1 ({meaning})")
  if not isinstance(config.total_steps, int) or config.total_steps < 0:
    raise UserError(f"total_steps={config.total_steps!r} is not valid: it must be an integer "
                    ">= 1, or 0 to run total_epochs")
  if not config.total_steps and not config.total_epochs > 0:
    raise UserError(f"total_epochs={config.total_epochs!r} is not valid with total_steps=0: "
                    "it must be > 0")
  if config.batch_size % (jax.device_count() * config.accum_steps):
    raise UserError(
        f"batch_size {config.batch_size} must divide evenly over {jax.device_count()} devices "
        f"x accum_steps {config.accum_steps}")

  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  for path in (workdir, directory):
    if os.path.exists(path) and not os.path.isdir(path):
      raise UserError(f"workdir {workdir!r} is not valid: {path} is a file, not a directory "
                      "(give a new or an existing train.py workdir)")
  if not os.path.isdir(directory):
    return
  previous = checkpointing.Checkpointer(directory, read_only=True)
  try:
    step = previous.latest_step()
    found = previous.param_shapes(step) if step is not None else None
  finally:
    previous.close()
  if step is None:
    return
  total_steps = _total_steps(config, num_train)
  if step > total_steps:
    raise UserError(f"this workdir holds step {step}, beyond total_steps {total_steps}: set "
                    f"total_steps >= {step} to continue it, or use another workdir")
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, config.image_size, config.image_size, 3))))["params"]
  expected = {"/".join(k.key for k in path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  if found != expected:
    raise UserError(f"this workdir holds a {pretrained.describe(found)} run; the config asks "
                    f"for a {pretrained.describe(expected)} (model={config.model}, "
                    f"num_classes={config.num_classes}): use another workdir, or the run's "
                    "model and num_classes")


def _total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  return config.total_steps or math.ceil(config.total_epochs * num_train / config.batch_size)


def _check_finite(step_metrics: dict[str, np.ndarray], step: int,
                  checkpointer: checkpointing.Checkpointer) -> None:
  """Stops on a NaN/Inf loss, or on parameters an exploding update made non-finite."""
  loss, param_norm = (float(step_metrics[k]) for k in ("loss", "param_norm"))
  if not (np.isfinite(loss) and np.isfinite(param_norm)):
    checkpointer.wait()  # Let a save in flight finish, so the last good one stays whole.
    raise NonFiniteLossError(
        f"loss is {loss} (parameter norm {param_norm}) at step {step}; stopping. "
        f"The last good checkpoint "
        f"(step {checkpointer.latest_step()}) in {checkpointer.directory} is untouched; "
        "lower the learning rate or check the input.")


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update({f"{key}.{k}": v for k, v in _flat_hparams(value).items()})
    else:
      flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat


class _PreemptionFlag:
  """True once SIGTERM or SIGINT (Ctrl-C) arrived; the loop then saves and exits instead of
  dying mid-step. A second Ctrl-C interrupts at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name = None
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def restore(self):
    for s, previous in self._previous.items():
      signal.signal(s, previous)

  def _handle(self, signum, frame):
    del frame
    if self.signal_name == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = self.signal_name or signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint after this step, then exiting.",
                    signal.Signals(signum).name)

  def __bool__(self):
    return self.signal_name is not None
