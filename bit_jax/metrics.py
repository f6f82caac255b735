"""Evaluation counts that add up across batches and devices (padding masked out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def topk_correct(logits: jax.Array, labels: jax.Array, mask: jax.Array, k: int) -> jax.Array:
  """How many unmasked examples have a positive label among their k highest logits.

  With one-hot labels this is top-k accuracy's numerator; with multi-hot labels and k=1 it
  is precision@1's (the top prediction is one of the image's labels).
  """
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.take_along_axis(labels, top, axis=-1).max(axis=-1) > 0
  return jnp.sum(hit * mask)


def eval_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                loss_per_example: jax.Array) -> dict[str, jax.Array]:
  """Sums for top-1, top-5, loss and the example count; divide once at the end."""
  k5 = min(5, logits.shape[-1])
  return {"top1": topk_correct(logits, labels, mask, 1),
          "top5": topk_correct(logits, labels, mask, k5),
          "loss": jnp.sum(loss_per_example * mask),
          "count": jnp.sum(mask)}
