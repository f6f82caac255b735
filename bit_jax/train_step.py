"""The training state and the pure train and eval steps, ready for `jax.jit` over a mesh.

The steps know nothing about devices: `bit_jax.train` jits them with the batch sharded on the
mesh's `data` axis and the state replicated (plain data parallelism) or split by
`bit_jax.sharding`'s fsdp rule.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from bit_jax import models
from bit_jax.mixup import mixup

Batch = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> per-example loss


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def create_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def make_train_step(model, optimizer: optax.GradientTransformation, loss_fn: LossFn,
                    schedule: Callable[[jax.Array], jax.Array], *, accum_steps: int = 1,
                    mixup_alpha: float = 0.0, rng: jax.Array | None = None,
                    trainable: Any = None) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """One optimizer update from `batch["image"]` and dense `batch["label"]`.

  With `accum_steps` > 1 the batch is split into that many micro-batches whose gradients are
  averaged before the update: the same result as the full batch (GroupNorm has no batch
  statistics), in a fraction of the activation memory. With `mixup_alpha` > 0 the batch is
  mixed on device first, with randomness `fold_in(rng, step)`. `trainable` (a tree of
  Python bools like the params, `bit_jax.freezing.mask`) freezes the False leaves: their
  gradients are zeros (so XLA skips computing them) and they are kept exactly as they were.
  """
  if mixup_alpha > 0 and rng is None:
    raise ValueError("mixup needs an rng")
  # Weight standardization depends on the parameters only, so it is computed once per step
  # and backpropagated through once (jax.vjp), outside the micro-batch loop: the model
  # inside the loop takes the standardized kernels as they are.
  inner_model, standardize = models.hoist_weight_standardization(model)

  def mean_loss(params, images, labels):
    logits, _ = inner_model.apply({"params": params}, images, train=True)
    return jnp.mean(loss_fn(logits, labels))

  grad_fn = jax.value_and_grad(mean_loss)

  def loss_and_grads(params, images, labels):
    params, standardize_vjp = jax.vjp(standardize, params)
    if accum_steps == 1:
      loss, grads = grad_fn(params, images, labels)
    else:
      loss, grads = _accumulated(grad_fn, params, images, labels, accum_steps)
    grads, = standardize_vjp(grads)
    if trainable is not None:
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    return loss, grads

  def train_step(state: TrainState, batch: Batch):
    if mixup_alpha > 0:
      batch = mixup(jax.random.fold_in(rng, state.step), batch, mixup_alpha)
    loss, grads = loss_and_grads(state.params, batch["image"], batch["label"])
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if trainable is not None:  # Bitwise as they were (x + 0.0 would turn -0.0 into 0.0).
      params = jax.tree.map(lambda new, old, t: new if t else old, params, state.params,
                            trainable)
    step_metrics = {"loss": loss, "learning_rate": schedule(state.step),
                    "grad_norm": optax.global_norm(grads),
                    "param_norm": optax.global_norm(params)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), step_metrics

  return train_step


def _accumulated(grad_fn, params, images, labels, accum_steps):
  """Mean loss and gradient over `accum_steps` equal micro-batches, one at a time."""
  def split(x):
    # Micro-batch j takes every accum_steps-th example, so each device keeps its own rows
    # and contributes equally to every micro-batch: no data moves between devices.
    x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  def add_micro_batch(carry, micro_batch):
    loss, grads = grad_fn(params, *micro_batch)
    return jax.tree.map(jnp.add, carry, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  total, _ = jax.lax.scan(add_micro_batch, zeros, (split(images), split(labels)))
  return jax.tree.map(lambda x: x / accum_steps, total)
