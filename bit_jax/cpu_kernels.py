"""XLA:CPU-tuned equivalents of the model's plain operations; `models.get_model` picks them
on a CPU backend (`kernels="cpu"`), accelerators never run them.

Each computes what its plain counterpart in `bit_jax.models` computes: tests/test_cpu_kernels.py
checks values and gradients against autodiff of the plain formulation. Each stays only while
a same-run A/B on CPU shows at least a 3% gain of the train or inference step
(`benchmarks/kernels.py`, recorded in benchmarks/RESULTS.md). GroupNorm + ReLU and weight
standardization have written-out gradients (custom VJPs), so forward-mode autodiff
(`jax.jvp`) needs the plain model.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bit_jax import normalization


class GroupNormReLU(nn.Module):
  """`models.GroupNormAct` with its ReLU, as one function with a written-out gradient.

  Differentiated by autodiff, XLA:CPU fuses each block's chain of GroupNorm gradients along
  the residual stream into fusions that recompute the per-group terms for every element.
  """
  groups: int = normalization.GROUPS
  epsilon: float = normalization.GN_EPSILON
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return group_norm_relu(x.astype(self.dtype), scale, bias, self.groups, self.epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_relu(x: jax.Array, scale: jax.Array, bias: jax.Array,
                    groups: int = normalization.GROUPS,
                    epsilon: float = normalization.GN_EPSILON) -> jax.Array:
  """relu(normalization.group_norm(x, scale, bias)): statistics in float32, output in x's dtype.

  Normalisation and the affine map are applied as one per-(example, channel) scale and
  shift; the gradient is two per-channel sums over the spatial axes and one elementwise pass.
  """
  return _group_norm_relu_fwd(x, scale, bias, groups, epsilon)[0]


def _per_pixel(v: jax.Array) -> jax.Array:
  """A per-(example, channel) value, shape (N, C), as (N, 1, 1, C) for NHWC broadcasting."""
  return v[:, None, None, :]


def _group_norm_relu_fwd(x, scale, bias, groups, epsilon):
  x32 = x.astype(jnp.float32)
  mean, inv_std = _group_statistics(x32, groups, epsilon)
  multiplier = inv_std * scale  # (N, C)
  shift = bias - mean * multiplier
  y = jax.nn.relu(x32 * _per_pixel(multiplier) + _per_pixel(shift))
  return y.astype(x.dtype), (x, scale, mean, inv_std, shift)


def _group_norm_relu_bwd(groups, epsilon, residuals, grad):
  del epsilon  # Already in inv_std.
  x, scale, mean, inv_std, shift = residuals
  n, channels = x.shape[0], x.shape[-1]
  spatial_axes = tuple(range(1, x.ndim - 1))
  x32 = x.astype(jnp.float32)
  multiplier = inv_std * scale
  # Through the ReLU, then y = scale * x_hat + bias.
  active = x32 * _per_pixel(multiplier) + _per_pixel(shift) > 0
  d = jnp.where(active, grad.astype(jnp.float32), 0.0)
  x_hat = (x32 - _per_pixel(mean)) * _per_pixel(inv_std)
  sum_d = jnp.sum(d, axis=spatial_axes)  # (N, C)
  sum_d_x_hat = jnp.sum(d * x_hat, axis=spatial_axes)
  # Through x_hat = (x - mean) * inv_std, whose mean and std are over each group's m
  # elements: dx = inv_std * (g - mean_group(g) - x_hat * mean_group(g * x_hat)), g = scale d.
  m = x32.size // (n * groups)
  group_mean = lambda v: _group_to_channels(
      jnp.sum(v.reshape(n, groups, -1), axis=-1, keepdims=True) / m, channels)
  mean_g = group_mean(scale * sum_d)
  mean_g_x_hat = group_mean(scale * sum_d_x_hat)
  dx = (_per_pixel(multiplier) * d
        - _per_pixel(inv_std) * (_per_pixel(mean_g) + x_hat * _per_pixel(mean_g_x_hat)))
  return dx.astype(x.dtype), jnp.sum(sum_d_x_hat, axis=0), jnp.sum(sum_d, axis=0)


group_norm_relu.defvjp(_group_norm_relu_fwd, _group_norm_relu_bwd)


def _group_statistics(x: jax.Array, groups: int, epsilon: float):
  """Per (example, channel) mean and 1/std of each channel's group, shape (N, C).

  Per-channel sums of x - s and (x - s)**2 over the spatial axes, where the shift s is the
  channel's value at the first pixel (so the sums do not cancel when a channel's mean is
  large against its spread), combined into group statistics by the parallel-variance rule:
  XLA:CPU fuses this far better than a grouped 5-D reshape with a centred two-pass variance.
  """
  n, channels = x.shape[0], x.shape[-1]
  spatial_axes = tuple(range(1, x.ndim - 1))
  shift = x[(slice(None),) + (slice(0, 1),) * len(spatial_axes)]
  shifted = x - shift
  shifted_mean = jnp.mean(shifted, axis=spatial_axes)  # (N, C)
  shifted_square_mean = jnp.mean(jnp.square(shifted), axis=spatial_axes)
  channel_mean = shift.reshape(n, channels) + shifted_mean
  channel_var = jnp.maximum(shifted_square_mean - jnp.square(shifted_mean), 0.0)
  grouped = lambda v: v.reshape(n, groups, channels // groups)
  group_mean = jnp.mean(grouped(channel_mean), axis=-1, keepdims=True)
  group_var = jnp.mean(grouped(channel_var)
                       + jnp.square(grouped(channel_mean) - group_mean), axis=-1, keepdims=True)
  inv_std = jax.lax.rsqrt(group_var + epsilon)
  return _group_to_channels(group_mean, channels), _group_to_channels(inv_std, channels)


def _group_to_channels(v: jax.Array, channels: int) -> jax.Array:
  """A per-(example, group) value, shape (N, G, 1), repeated for each of the group's
  channels: shape (N, C)."""
  n, groups = v.shape[:2]
  return jnp.broadcast_to(v, (n, groups, channels // groups)).reshape(n, channels)


class Conv(nn.Module):
  """`models.Conv` (a bias-free `nn.Conv`, same parameter) with its 1x1 convolutions as
  one matrix product of the (strided) pixels with the kernel; k x k stays XLA's convolution.

  XLA:CPU runs a 1x1 convolution, and above all its kernel gradient, well below its
  matrix-product rate.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: Any = "SAME"
  dtype: Any = None
  kernel_init: Any = nn.initializers.he_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    dtype = self.dtype or x.dtype
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if tuple(self.kernel_size) == (1, 1) and self.padding in ("VALID", "SAME"):
      x = x[:, ::self.strides, ::self.strides]  # A 1x1 window needs no padding either way.
      return (x.reshape(-1, x.shape[-1]) @ kernel[0, 0]).reshape(*x.shape[:3], -1)
    return jax.lax.conv_general_dilated(x, kernel, (self.strides, self.strides), self.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def weight_standardize(kernel: jax.Array) -> jax.Array:
  """`normalization.weight_standardize` with its gradient written out, in one pass.

  The kernel is viewed as (H*W*in, out), so both statistics are column reductions;
  differentiated through the two reductions, XLA:CPU ran the backward at a fraction of
  this speed.
  """
  return _weight_standardize_fwd(kernel)[0]


def _weight_standardize_fwd(kernel):
  columns = kernel.reshape(-1, kernel.shape[-1])
  centred = columns - jnp.mean(columns, axis=0)
  inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=0) + normalization.WS_EPSILON)
  standardized = centred * inv_std
  return standardized.reshape(kernel.shape), (standardized, inv_std)


def _weight_standardize_bwd(residuals, grad):
  # d/dk of (k - mean) / std: inv_std * (g - mean(g) - w * mean(g * w)), per column.
  standardized, inv_std = residuals
  g = grad.reshape(standardized.shape)
  dk = inv_std * (g - jnp.mean(g, axis=0)
                  - standardized * jnp.mean(g * standardized, axis=0))
  return (dk.reshape(grad.shape),)


weight_standardize.defvjp(_weight_standardize_fwd, _weight_standardize_bwd)
standardize_weights = functools.partial(normalization.standardize_weights,
                                        standardize=weight_standardize)


# The model fields `get_model(kernels="cpu")` replaces.
# Measured and dropped: the max-pool as two separable `where(a >= b)` passes (its gradient
# avoids XLA:CPU's select-and-scatter) gained 1.8% of the train step and 1.6% of inference.
OPS = {"conv": Conv, "norm_act": GroupNormReLU, "weight_standardization": standardize_weights}
