"""MixUp (Zhang et al. 2018) on device, as BiT fine-tuning uses it: pure jax, called inside
the jitted train step (`bit_jax.train_step`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mixup(rng: jax.Array, batch: dict[str, jax.Array], alpha: float,
          keys: tuple[str, ...] = ("image", "label")) -> dict[str, jax.Array]:
  """Mixes every example with its mirror in the batch.

  One lambda ~ Beta(alpha, alpha) per batch, drawn as
  `jax.random.beta(rng, alpha, alpha)`; example i's partner is example
  B-1-i (`x[::-1]`), so with an even batch every example has another
  partner (with an odd one the middle example is left as is):

      batch[k] = lam * batch[k] + (1 - lam) * batch[k][::-1]

  for k in `keys`. A reversal, not `jnp.roll`: on a batch sharded over an
  Explicit mesh axis (`jax.make_mesh`'s default) roll is not implemented.
  Labels must be one-hot (`onehot` op): training on the mixed one-hot label
  equals BiT's lam * CE(y_i) + (1 - lam) * CE(y_partner). alpha <= 0 returns
  the batch unchanged; other keys pass through.
  """
  if alpha <= 0:
    return batch
  lam = jax.random.beta(rng, alpha, alpha)
  mixed = dict(batch)
  for k in keys:
    x = batch[k]
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    mixed[k] = (lam * x + (1 - lam) * x[::-1]).astype(dtype)
  return mixed
