"""Per-example classification losses on dense labels: one-hot (or mixed) or multi-hot rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bit_jax.errors import UserError


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-sum(labels * log_softmax(logits)) per example; label rows sum to 1."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.sum(labels * log_probs, axis=-1)


def sigmoid_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Multi-label: independent binary cross-entropies summed over classes, per example.

  ImageNet-21k images carry several labels; BiT-M trains on all of them this way.
  """
  logits = logits.astype(jnp.float32)
  per_class = labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits)
  return -jnp.sum(per_class, axis=-1)


LOSSES = {"softmax_xent": softmax_xent, "sigmoid_xent": sigmoid_xent}


def get_loss(name: str):
  if name not in LOSSES:
    raise UserError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
  return LOSSES[name]
