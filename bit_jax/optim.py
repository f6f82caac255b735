"""Upstream learning-rate schedules and optimizers, built from a config.

The paper's recipe (`schedule="paper"`, `weight_decay_style="coupled"`): SGD with momentum
0.9, lr 0.03 x batch/256, linear warmup, /10 at fixed epochs, L2 weight decay 1e-4 added to
the gradient. The modern variant (`schedule="cosine"`, `weight_decay_style="decoupled"`,
`grad_clip_norm`) is what later BiT-like recipes (big_vision) use.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from bit_jax.errors import UserError

Schedule = Callable[[jax.Array], jax.Array]
SCHEDULES = ("paper", "cosine")
WEIGHT_DECAY_STYLES = ("coupled", "decoupled")


def base_learning_rate(lr_per_256: float, batch_size: int) -> float:
  """The linear scaling rule: lr 0.03 at batch 256 is 0.48 at the paper's 4096."""
  return lr_per_256 * batch_size / 256


def paper_schedule(base_lr: float, warmup_steps: int, decay_steps: Sequence[int]) -> Schedule:
  """Linear warmup from 0 over `warmup_steps`, then /10 at each of `decay_steps`."""
  boundaries = jnp.asarray(decay_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.minimum(1.0, step / max(warmup_steps, 1))
    return base_lr * warmup * 0.1 ** jnp.sum(step >= boundaries)

  return schedule


def cosine_schedule(base_lr: float, warmup_steps: int, total_steps: int) -> Schedule:
  """Linear warmup from 0, then cosine decay to 0 at `total_steps`."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.minimum(1.0, step / max(warmup_steps, 1))
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    return base_lr * warmup * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

  return schedule


def make_schedule(config: Any, steps_per_epoch: float, total_steps: int) -> Schedule:
  """The schedule named by `config.schedule`, with epochs converted to steps."""
  base_lr = base_learning_rate(config.lr_per_256, config.batch_size)
  if config.schedule == "paper":
    decay_steps = [round(epoch * steps_per_epoch) for epoch in config.decay_epochs]
    return paper_schedule(base_lr, config.warmup_steps, decay_steps)
  if config.schedule == "cosine":
    return cosine_schedule(base_lr, config.warmup_steps, total_steps)
  raise UserError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")


def kernels_only(params: Any) -> Any:
  """Weight decay mask: conv and dense kernels, not GroupNorm scales or biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config: Any, schedule: Schedule) -> optax.GradientTransformation:
  """SGD with momentum, weight decay placed as `config.weight_decay_style` says."""
  if config.weight_decay_style not in WEIGHT_DECAY_STYLES:
    raise UserError(f"unknown weight_decay_style {config.weight_decay_style!r}; "
                    f"valid: {', '.join(WEIGHT_DECAY_STYLES)}")
  decay = optax.add_decayed_weights(config.weight_decay, mask=kernels_only)
  clip = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
  momentum = optax.trace(decay=config.momentum)
  if config.weight_decay_style == "coupled":
    # L2 regularisation: the decay joins the gradient before momentum (the paper's SGD).
    chain = [*clip, decay, momentum]
  else:
    # Decoupled: the decay bypasses momentum, still scaled by the learning rate (SGDW).
    chain = [*clip, momentum, decay]
  return optax.chain(*chain, optax.scale_by_learning_rate(schedule))
