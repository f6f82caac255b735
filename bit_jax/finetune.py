"""One BiT-HyperRule fine-tuning run: a source in, test top-1 and calibration out.

SGD with momentum 0.9 and no weight decay, batch 512, the HyperRule's schedule, resolution
and MixUp; the head starts at zero. `bit_jax.transfer` calls this once per (shots, seed,
initialisation) and writes the results.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

import input_pipeline
from bit_jax import (calibration, checkpointing, features, freezing, hyperrule, loop, losses,
                     models, run_dir)
from bit_jax import sharding as sharding_lib
from bit_jax import train_step as train_step_lib
from bit_jax.errors import UserError

# The network downsamples by 32: a smaller crop leaves block4 nothing to see.
MIN_CROP = 32


@dataclasses.dataclass(frozen=True)
class Plan:
  """Every setting of one run, after the HyperRule and the config's overrides: the functions
  below read nothing else. `make_plan` builds it from a config."""
  resize: int
  crop: int
  schedule: tuple[int, ...]  # [warmup, decay1, decay2, decay3, total] in steps.
  mixup_alpha: float
  base_lr: float
  batch_size: int
  accum_steps: int  # Micro-batches per step: the same update in less activation memory.
  eval_batch_size: int
  shuffle_buffer: int  # Training examples shuffled over, per process.
  log_every_steps: int  # Also how often a diverged (NaN/Inf) loss is caught.
  preemption_check_every_steps: int = 10  # Multi-host: how often hosts agree on stopping.
  # Off for tasks whose label a flip or a crop would change (VTAB's positions, orientations).
  flip: bool = True
  random_crop: bool = True  # Else resize straight to the crop size, as in evaluation.
  trainable: str = "all"  # What is updated (bit_jax.freezing): all, head, or blockN onwards.
  checkpoint_every_steps: int = 0  # With a checkpoint directory; 0: only on SIGTERM.
  sharding: str = "replicated"  # The train state on the mesh (bit_jax.sharding), or fsdp.
  fsdp_min_size: int = sharding_lib.DEFAULT_MIN_SIZE  # fsdp: elements a leaf needs to split.

  def pp_train(self, num_classes: int) -> str:
    size = (f"resize({self.resize})|random_crop({self.crop})" if self.random_crop
            else f"resize({self.crop})")
    flip = "|flip_lr" if self.flip else ""
    return (f"decode|{size}{flip}|value_range(-1,1)|onehot({num_classes})|"
            "keep('image', 'label')")

  def pp_eval(self, num_classes: int) -> str:
    """What the run's model card records (`run_dir.pp_image`), with one-hot labels."""
    return (f"{run_dir.pp_image(self.crop)}|onehot({num_classes})|"
            f"keep('image', 'label')")


def make_plan(config: Any, dataset_size: int, image_hw: tuple[int, int] | None) -> Plan:
  """The HyperRule for `dataset_size` training examples of `image_hw` images, with the
  config's overrides and its other fine-tuning fields."""
  if config.resolution:
    resolution = config.resolution
    if not (isinstance(resolution, (tuple, list)) and len(resolution) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in resolution)):
      raise UserError(f"resolution={resolution!r} is not valid: it must be two integers "
                      "RESIZE,CROP, e.g. --config.resolution=448,384, or () for the "
                      "HyperRule's")
    resize, crop = resolution
  elif image_hw is None:
    raise UserError("the dataset's image size is unknown (variable-size images or mock "
                    "data); set --config.resolution=RESIZE,CROP, e.g. 448,384")
  else:
    resize, crop = hyperrule.get_resolution(image_hw, config.hyperrule_variant)
  if crop < MIN_CROP or resize < crop:
    raise UserError(f"resolution (resize {resize}, crop {crop}) is too small for "
                    f"{config.model}: the crop must be at least {MIN_CROP} pixels (the "
                    "network downsamples by 32) and no larger than the resize")
  schedule = hyperrule.get_schedule(dataset_size)
  if config.total_steps:  # A shorter run for CPUs and tests: the same shape, rescaled.
    schedule = [max(1, round(s * config.total_steps / schedule[-1])) for s in schedule]
  mixup = hyperrule.get_mixup(dataset_size) if config.mixup_alpha < 0 else config.mixup_alpha
  sharding = config.get("sharding", "replicated")
  fsdp_min_size = config.get("fsdp_min_size", sharding_lib.DEFAULT_MIN_SIZE)
  sharding_lib.check(sharding, fsdp_min_size)
  return Plan(resize=resize, crop=crop, schedule=tuple(schedule), mixup_alpha=mixup,
              base_lr=config.base_lr, batch_size=config.batch_size,
              accum_steps=config.accum_steps, eval_batch_size=config.eval_batch_size,
              shuffle_buffer=config.shuffle_buffer, log_every_steps=config.log_every_steps,
              trainable=freezing.check(config.trainable),
              checkpoint_every_steps=config.checkpoint_every_steps,
              preemption_check_every_steps=config.preemption_check_every_steps,
              sharding=sharding,
              fsdp_min_size=fsdp_min_size)


@dataclasses.dataclass(frozen=True)
class KeptRun:
  """Where and as what `finetune` keeps a run: `directory` holds its checkpoints while it
  trains (a rerun resumes from them), then its model (`bit_jax.run_dir`), whose card gets
  these fields and the plan's steps and the test metrics in its provenance."""
  directory: str
  model: str  # The model's name, e.g. BiT-M-R50x1.
  class_names: tuple[str, ...]
  provenance: dict[str, Any]  # Where the run came from: init, dataset, split, seed, ...
  label_mapping: str = "identity"

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.directory, checkpointing.CHECKPOINT_DIR)


def finetune(model: models.ResNetV2, params: Any, train_source, train_split: str,
             test_source, test_split: str, num_classes: int, plan: Plan, *, seed: int,
             mesh: jax.sharding.Mesh, cache_train: bool = False,
             keep: KeptRun | None = None) -> tuple[dict[str, Any], Any]:
  """Fine-tunes `params` by `plan` (see `train`); returns (test top-1, ECE and the example
  count; the fine-tuned parameters, on the host). With `keep`, the run is resumable and
  leaves its model (`keep_run`)."""
  params = train(model, params, train_source, train_split, num_classes, plan, seed=seed,
                 mesh=mesh, cache_train=cache_train,
                 checkpoint_dir=None if keep is None else keep.checkpoints)
  result = evaluate(model, params, test_source, test_split, num_classes, plan, mesh=mesh)
  params = jax.device_get(params)
  if keep is not None:
    keep_run(keep, params, plan, result)
  return result, params


def keep_run(keep: KeptRun, params: Any, plan: Plan, result: dict[str, Any]) -> None:
  """Writes the fine-tuned model into `keep.directory` (process 0) and removes the run's
  checkpoints: params.npz holds what they led to."""
  if jax.process_index() != 0:
    return
  card = run_dir.ModelCard(
      model=keep.model, class_names=keep.class_names, resize=plan.resize, crop=plan.crop,
      pp_image=run_dir.pp_image(plan.crop), label_mapping=keep.label_mapping,
      provenance={**keep.provenance, "steps": plan.schedule[-1], "trainable": plan.trainable,
                  "eval_batch_size": plan.eval_batch_size, **result})
  run_dir.write(keep.directory, params, card)
  shutil.rmtree(keep.checkpoints, ignore_errors=True)


def train(model: models.ResNetV2, params: Any, train_source, train_split: str,
          num_classes: int, plan: Plan, *, seed: int, mesh: jax.sharding.Mesh,
          cache_train: bool = False, checkpoint_dir: str | None = None) -> Any:
  """The fine-tuned parameters: `plan.schedule[-1]` SGD steps from `params`.

  `cache_train` keeps the training examples in memory after the first epoch: a few-shot
  subset is otherwise found again by reading its whole split every epoch.

  With `checkpoint_dir`, the run saves its state there every `plan.checkpoint_every_steps`
  (0: never) and on SIGTERM/SIGINT (then raises `errors.Preempted`), and a run that finds a
  checkpoint there continues from it: the batches from that step on are those an
  uninterrupted run sees, so it ends with the same parameters.
  """
  train_step, optimizer = _train_step(model, plan, seed if plan.mixup_alpha > 0 else 0, mesh)
  state = train_step_lib.create_train_state(params, optimizer)
  state = jax.device_put(state, sharding_lib.shardings(state, mesh, plan.sharding,
                                                       plan.fsdp_min_size))
  checkpointer = (checkpointing.Checkpointer(checkpoint_dir, keep=1) if checkpoint_dir
                  else None)
  if checkpointer and checkpointer.latest_step() is not None:
    # A damaged newest step is set aside (logged) and the newest good one used.
    state, _ = checkpointer.restore_good(checkpointing.abstract_of(state), move_damaged=True)
    logging.info("Resuming fine-tuning from step %d in %s", int(state.step), checkpoint_dir)
  start = int(state.step)
  batches = input_pipeline.train_iterator(
      train_source, train_split, plan.pp_train(num_classes), plan.batch_size, mesh,
      seed=seed, start_step=start, shuffle_buffer=plan.shuffle_buffer, cache=cache_train)
  total = plan.schedule[-1]

  def log_line(step, host_metrics):
    logging.info("fine-tune step %d/%d: loss %.4f, lr %.5f", step, total,
                 float(host_metrics["loss"]), float(host_metrics["learning_rate"]))

  # The fine-tuned parameters are kept in the run directory (`bit_jax.run_dir`), not as a
  # final checkpoint.
  cadence = loop.Cadence(
      total_steps=total, log_every_steps=plan.log_every_steps,
      checkpoint_every_steps=plan.checkpoint_every_steps,
      preemption_check_every_steps=plan.preemption_check_every_steps, save_last=False)
  state = loop.run(state, train_step, batches, start_step=start, cadence=cadence,
                   checkpointer=checkpointer, name="fine-tuning",
                   remedy="lower --config.base_lr", on_log=log_line)
  return sharding_lib.replicate(state.params, mesh)  # fsdp: gathered, by every process.


@functools.lru_cache(maxsize=8)
def _train_step(model: models.ResNetV2, plan: Plan, mixup_seed: int, mesh: jax.sharding.Mesh):
  """(jitted train step, optimizer), built once per plan: every (shots, seed, init) run
  with the same schedule reuses one compiled step instead of compiling its own."""
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  schedule = hyperrule.staircase_schedule(plan.schedule, plan.base_lr)
  optimizer = optax.chain(optax.trace(decay=0.9), optax.scale_by_learning_rate(schedule))
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), MIN_CROP))
  trainable = None
  if plan.trainable != "all":
    trainable = freezing.mask(shapes, plan.trainable)
    optimizer = freezing.optimizer(optimizer, trainable)
  state_shardings = sharding_lib.shardings(
      jax.eval_shape(lambda p: train_step_lib.create_train_state(p, optimizer), shapes), mesh,
      plan.sharding, plan.fsdp_min_size)
  step_fn = train_step_lib.make_train_step(
      model, optimizer, losses.softmax_xent, schedule, accum_steps=plan.accum_steps,
      mixup_alpha=plan.mixup_alpha, rng=jax.random.key(mixup_seed), trainable=trainable)
  step = jax.jit(step_fn, in_shardings=(state_shardings, sharded),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)
  return step, optimizer


@functools.partial(jax.jit, static_argnames=("model", "crop"))
def init_params(model: models.ResNetV2, rng: jax.Array, crop: int) -> Any:
  """Random parameters, in one compiled call (eager init dispatches op by op)."""
  return model.init(rng, jnp.zeros((1, crop, crop, 3)))["params"]


def evaluate(model, params, source, split, num_classes, plan, *, mesh):
  """Top-1, ECE and the number of examples of the whole `split`, in `features.extract`'s
  padded, masked batches (those `bit_jax.predict` runs, so it reproduces these numbers)."""
  out = features.extract(model, params, source, split, plan.pp_eval(num_classes),
                         batch_size=plan.eval_batch_size, mesh=mesh, outputs=("logits",))
  logits, labels = out["logits"], out[features.LABELS]
  probs = np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
  return {"top1": float(np.mean(logits.argmax(-1) == labels)),
          "ece": calibration.expected_calibration_error(probs, labels),
          "num_test_examples": int(len(labels))}
