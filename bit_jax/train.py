"""Upstream pretraining: `train_and_evaluate(config, workdir)`.

Follow one batch: `input_pipeline.train_iterator` shards it on the mesh's `data` axis ->
`train_step` (jit: state donated, replicated or split by `config.sharding`, see
`bit_jax.sharding`) -> metrics, and the evaluators of
`config.evals` (`bit_jax.evaluators`) when due, to TensorBoard and the log ->
`Checkpointer` every `checkpoint_every_steps` -> at the end, the official .npz export.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import metric_writers, periodic_actions
from jax.sharding import NamedSharding, PartitionSpec as P

import input_pipeline
from bit_jax import (checkpointing, distributed, host_allocator, loop, losses, models, npz, optim,
                     pretrained, run_settings, sharding)
from bit_jax import train_step as train_step_lib
from bit_jax.evaluators import Evaluators
from bit_jax.errors import UserError


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config.model` on `config.dataset` in `workdir`; returns the final eval metrics."""
  distributed.maybe_initialize(config)
  mesh = distributed.data_mesh()
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  host_allocator.log_advice(jax.default_backend())

  model = models.get_model(config.model, num_classes=config.num_classes, dtype=config.dtype,
                           remat=config.remat, kernels=config.kernels,
                           head_bias_init=config.head_bias_init,
                           platform=mesh.devices.flat[0].platform)
  num_train = config.num_train_examples or input_pipeline.num_examples(
      config.dataset, config.train_split, data_dir=config.data_dir)
  _check_config(config, workdir, model, num_train)  # Before anything is written.
  # config.evals, checked here too; an evaluator reads its data only when it first runs.
  evaluators = Evaluators.from_config(config, model, mesh)
  steps_per_epoch = num_train / config.batch_size
  total_steps = _total_steps(config, num_train)
  schedule = optim.make_schedule(config, steps_per_epoch, total_steps)
  optimizer = optim.make_optimizer(config, schedule)
  loss_fn = losses.get_loss(config.loss)

  image_shape = (1, config.image_size, config.image_size, 3)

  def new_state(params):
    if params is None:
      params = model.init(jax.random.key(config.seed), jnp.zeros(image_shape))["params"]
    return train_step_lib.create_train_state(params, optimizer)

  # config.sharding (bit_jax.sharding): the state replicated, or its large leaves split over
  # `data` (fsdp). A checkpoint is restored into these shardings, whatever mesh wrote it.
  shapes = jax.eval_shape(lambda: new_state(None))
  state_shardings = sharding.shardings(shapes, mesh, config.sharding, config.fsdp_min_size)
  abstract_state = sharding.abstract(shapes, state_shardings)
  init_state = jax.jit(new_state, out_shardings=state_shardings)
  logging.info("sharding=%s: %s", config.sharding, sharding.describe(shapes, state_shardings))

  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, checkpointing.CHECKPOINT_DIR), keep=config.keep_checkpoints,
      use_async=config.async_checkpoints)
  state, origin = checkpointing.restore_or_initialize(
      checkpointer, abstract_state, init_state, model, resume=config.resume, init=config.init)
  start_step = int(state.step)
  logging.info("Starting at step %d of %d: %s", start_step, total_steps, origin)
  # What a rerun must match (settings.json).
  run_settings.record(workdir, run_settings.upstream(config, total_steps))

  train_step = jax.jit(
      train_step_lib.make_train_step(model, optimizer, loss_fn, schedule,
                                     accum_steps=config.accum_steps),
      in_shardings=(state_shardings, sharded), out_shardings=(state_shardings, replicated),
      donate_argnums=0)

  train_batches = input_pipeline.train_iterator(
      config.dataset, config.train_split, config.pp_train, config.batch_size, mesh,
      seed=config.seed, start_step=start_step, data_dir=config.data_dir,
      shuffle_buffer=config.shuffle_buffer)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)

  results = {}
  timer = (time.perf_counter(), start_step)  # Since the last log: (time, step).

  def write_train_metrics(step, host_metrics):
    nonlocal timer
    scalars = {f"train/{k}": float(v) for k, v in host_metrics.items()}
    elapsed, steps_done = time.perf_counter() - timer[0], step - timer[1]
    scalars["train/images_per_sec_per_device"] = (
        steps_done * config.batch_size / elapsed / jax.device_count())
    timer = (time.perf_counter(), step)
    writer.write_scalars(step, scalars)

  def evaluate(step, state):
    progress(step)
    evaluated = evaluators.run(step, state.params, total_steps)  # Those due at this step.
    if evaluated:
      writer.write_scalars(step, evaluated)  # Under <eval name>/..., and to the log.
      results.update(evaluated)

  cadence = loop.Cadence(
      total_steps=total_steps, log_every_steps=config.log_every_steps,
      checkpoint_every_steps=config.checkpoint_every_steps,
      preemption_check_every_steps=config.preemption_check_every_steps)
  try:
    state = loop.run(state, train_step, train_batches, start_step=start_step, cadence=cadence,
                     checkpointer=checkpointer, name="training",
                     remedy="lower the learning rate or check the input",
                     on_log=write_train_metrics, after_step=evaluate)
  finally:
    writer.flush()
  params = sharding.replicate(state.params, mesh)  # fsdp: a collective, in every process.
  if jax.process_index() == 0:
    npz.save(jax.device_get(params), os.path.join(workdir, checkpointing.EXPORT_NAME))
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

  _check_data(config)
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  for path in (workdir, directory):
    if os.path.exists(path) and not os.path.isdir(path):
      raise UserError(f"workdir {workdir!r} is not valid: {path} is a file, not a directory "
                      "(give a new or an existing train.py workdir)")
  _check_writable(workdir)
  if not os.path.isdir(directory):
    return
  previous = checkpointing.Checkpointer(directory, read_only=True)
  try:
    step, found = previous.newest_param_shapes()  # A damaged newer one is skipped on restore.
  finally:
    previous.close()
  if step is None:
    return
  total_steps = _total_steps(config, num_train)
  if step > total_steps:
    raise UserError(f"this workdir holds step {step}, beyond total_steps {total_steps}: set "
                    f"total_steps >= {step} to continue it, or use another workdir")
  checkpointing.check_param_shapes(
      step, found, pretrained.model_param_shapes(model), "this workdir",
      "use another workdir, or the run's model and num_classes in place of "
      f"model={config.model}, num_classes={config.num_classes}")
  run_settings.check(workdir, run_settings.upstream(config, total_steps), guards=[directory],
                     may_change=[run_settings.TOTAL_STEPS])


def _check_data(config: ml_collections.ConfigDict) -> None:
  """Both splits exist and hold examples; both pps give labels the head's size."""
  source = input_pipeline.get_source(config.dataset, config.data_dir)
  for split_field, pp_field in (("train_split", "pp_train"), ("eval_split", "pp_eval")):
    split, pp = config[split_field], config[pp_field]
    input_pipeline.check_split(source, split)
    spec = source.read(split).map(input_pipeline.get_preprocess_fn(pp)).element_spec
    label = spec.get("label") if isinstance(spec, dict) else None
    shape = None if label is None or label.shape.rank is None else tuple(label.shape)
    if shape is None or None in shape:
      continue  # Not known before reading: the loss then fails on the first batch.
    if shape != (config.num_classes,):
      raise UserError(
          f"{pp_field} gives labels of shape {tuple(shape)}; the model's head has "
          f"num_classes={config.num_classes} outputs: end {pp_field} with "
          f"onehot({config.num_classes}), or set num_classes to the pp's")


def _check_writable(workdir: str) -> None:
  """The workdir (or, if new, the nearest folder above it that exists) can be written."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  checkpoints = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  for folder in (path, checkpoints):
    if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
      raise UserError(f"workdir {workdir!r} is not valid: {folder} is not writable "
                      "(give a workdir this user can write to)")


def _total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  return config.total_steps or math.ceil(config.total_epochs * num_train / config.batch_size)


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update({f"{key}.{k}": v for k, v in _flat_hparams(value).items()})
    else:
      flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat
