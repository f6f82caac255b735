"""BiT's GroupNorm and Weight Standardization (Section 4.3), plain: `bit_jax.models` is built
from them, `bit_jax.cpu_kernels` computes the same with written-out gradients."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

GROUPS = 32  # GroupNorm groups throughout, as in BiT.
GN_EPSILON = 1e-5
WS_EPSILON = 1e-10  # Weight standardization; tiny because it divides a kernel's std.


def weight_standardize(kernel: jax.Array, epsilon: float = WS_EPSILON) -> jax.Array:
  """Zero mean, unit variance per output channel over (H, W, in) of an HWIO kernel."""
  mean = jnp.mean(kernel, axis=(0, 1, 2))
  var = jnp.var(kernel, axis=(0, 1, 2))
  return (kernel - mean) * jax.lax.rsqrt(var + epsilon)


def standardize_weights(params: Any, standardize: Callable = weight_standardize) -> Any:
  """`params` with every convolution kernel (each 4-D, HWIO leaf) standardized by
  `standardize`: BiT standardizes all its convolutions and nothing else has four dimensions
  (the head is dense), so a convolution a researcher adds is standardized too."""
  return jax.tree.map(lambda p: standardize(p) if p.ndim == 4 else p, params)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int = GROUPS,
               epsilon: float = GN_EPSILON) -> jax.Array:
  """GroupNorm of NHWC `x`: statistics per example over the spatial axes and each group's
  channels, computed in float32; the output has x's dtype."""
  n, channels = x.shape[0], x.shape[-1]
  grouped = x.astype(jnp.float32).reshape(n, -1, groups, channels // groups)
  mean = jnp.mean(grouped, axis=(1, 3), keepdims=True)
  var = jnp.mean(jnp.square(grouped - mean), axis=(1, 3), keepdims=True)
  normalized = ((grouped - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape)
  return (normalized * scale + bias).astype(x.dtype)
