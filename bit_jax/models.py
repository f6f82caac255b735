"""ResNet-v2 with GroupNorm and Weight Standardization: the BiT model family.

Module names mirror the released checkpoints (`block1/unit01/a/standardized_conv2d/kernel`,
...), so the params tree *is* the official .npz layout without its `resnet/` prefix and
loading a checkpoint is a rename, not a search (see `bit_jax.npz`).

    model = get_model("BiT-M-R50x1", num_classes=10)
    logits, out = model.apply({"params": params}, images)   # NHWC in [-1, 1]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bit_jax import convolution
from bit_jax.errors import UserError

GROUPS = 32  # GroupNorm groups throughout, as in BiT.
GN_EPSILON = 1e-5
WS_EPSILON = 1e-10  # Weight standardization; tiny because it divides a kernel's std.


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Depth and width of one ResNet-v2: data, not a class per size."""
  units_per_block: tuple[int, ...]
  width_factor: int
  base_width: int = 64  # Root conv width; block i's bottleneck is base_width * 2**i.

  @property
  def depth(self) -> int:
    return 3 * sum(self.units_per_block) + 2


ARCHITECTURES = {
    "R50x1": Architecture((3, 4, 6, 3), 1),
    "R50x3": Architecture((3, 4, 6, 3), 3),
    "R101x1": Architecture((3, 4, 23, 3), 1),
    "R101x3": Architecture((3, 4, 23, 3), 3),
    "R152x2": Architecture((3, 8, 36, 3), 2),
    "R152x4": Architecture((3, 8, 36, 3), 4),
}
# Tiny variants so tests and the CPU demo run in seconds; GroupNorm(32) needs >= 32 channels.
TINY_ARCHITECTURES = {
    "tiny-R14": Architecture((1, 1, 1, 1), 1, base_width=32),
    "tiny-R26": Architecture((2, 2, 2, 2), 1, base_width=32),
}
# The release names: BiT-S (ILSVRC-2012) and BiT-M (ImageNet-21k) share architectures.
MODEL_NAMES = {f"BiT-{upstream}-{arch}": arch
               for upstream in ("S", "M") for arch in ARCHITECTURES}
MODEL_NAMES.update({name: name for name in TINY_ARCHITECTURES})


@jax.custom_vjp
def weight_standardize(kernel: jax.Array) -> jax.Array:
  """Zero mean, unit variance per output channel over (H, W, in) of an HWIO kernel.

  The kernel is viewed as (H*W*in, out), so both statistics are plain column reductions;
  the gradient is written out (one pass) rather than differentiated through the two
  reductions, which XLA:CPU ran at a fraction of the speed.
  """
  return _weight_standardize_fwd(kernel)[0]


def _weight_standardize_fwd(kernel):
  columns = kernel.reshape(-1, kernel.shape[-1])
  centred = columns - jnp.mean(columns, axis=0)
  inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=0) + WS_EPSILON)
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


def standardize_kernels(params: Any) -> Any:
  """`params` with every `standardized_conv2d/kernel` weight-standardized.

  The train step applies this once per step (and backpropagates through it once) to a model
  built with `kernels_standardized=True`, instead of once per micro-batch.
  """
  def maybe_standardize(path, leaf):
    keys = [getattr(k, "key", None) for k in path[-2:]]
    return weight_standardize(leaf) if keys == ["standardized_conv2d", "kernel"] else leaf
  return jax.tree_util.tree_map_with_path(maybe_standardize, params)


_standardize_kernels_jit = jax.jit(standardize_kernels)


def for_inference(model: ResNetV2, params: Any) -> tuple[ResNetV2, Any]:
  """(model, params) for a pass of many batches with fixed parameters: kernels standardized
  once here instead of in every forward call (~15% of R50x1's forward on XLA:CPU), at the
  cost of one more copy of the parameters while the pass runs. Outputs are unchanged.
  """
  if model.kernels_standardized:
    return model, params
  return model.clone(kernels_standardized=True), _standardize_kernels_jit(params)


class StdConv(nn.Module):
  """Bias-free convolution with a weight-standardized kernel.

  With `kernel_standardized=True` the `kernel` parameter is taken as already standardized
  (see `standardize_kernels`). `convolution.conv2d` picks how it is computed.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: Any = "VALID"
  dtype: Any = jnp.float32
  kernel_standardized: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.initializers.he_normal(),
        (self.kernel_size, self.kernel_size, x.shape[-1], self.features), jnp.float32)
    if not self.kernel_standardized:
      kernel = weight_standardize(kernel)
    return convolution.conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                              self.strides, self.padding)


class GroupNormReLU(nn.Module):
  """relu(GroupNorm(x)) with the checkpoint's `gamma`/`beta` names: every GroupNorm in
  ResNet-v2 is followed by a ReLU, and `group_norm_relu` differentiates the pair at once.
  """
  groups: int = GROUPS
  epsilon: float = GN_EPSILON
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.ones, (channels,), jnp.float32)
    beta = self.param("beta", nn.initializers.zeros, (channels,), jnp.float32)
    return group_norm_relu(x.astype(self.dtype), gamma, beta, self.groups, self.epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_relu(x: jax.Array, gamma: jax.Array, beta: jax.Array,
                    groups: int = GROUPS, epsilon: float = GN_EPSILON) -> jax.Array:
  """relu(gamma * (x - mean) / sqrt(var + epsilon) + beta), statistics per example over
  (spatial, channels of the group), computed in float32; the output has x's dtype.

  Normalisation and the affine map are applied as one per-channel scale and shift. The
  gradient is written out: two per-channel sums over the spatial axes and one elementwise
  pass. Differentiated by autodiff, XLA:CPU fused each block's chain of GroupNorm
  gradients along the residual stream into fusions that recompute the per-group terms for
  every element (6-7% of R50x1's train step, measured).
  """
  return _group_norm_relu_fwd(x, gamma, beta, groups, epsilon)[0]


def _per_pixel(v: jax.Array) -> jax.Array:
  """A per-(example, channel) value, shape (N, C), as (N, 1, 1, C) for NHWC broadcasting."""
  return v[:, None, None, :]


def _group_norm_relu_fwd(x, gamma, beta, groups, epsilon):
  x32 = x.astype(jnp.float32)
  mean, inv_std = _group_statistics(x32, groups, epsilon)
  scale = inv_std * gamma                     # (N, C)
  shift = beta - mean * scale
  y = jax.nn.relu(x32 * _per_pixel(scale) + _per_pixel(shift))
  return y.astype(x.dtype), (x, gamma, mean, inv_std, shift)


def _group_norm_relu_bwd(groups, epsilon, residuals, grad):
  del epsilon  # Already in inv_std.
  x, gamma, mean, inv_std, shift = residuals
  n, channels = x.shape[0], x.shape[-1]
  spatial_axes = tuple(range(1, x.ndim - 1))
  x32 = x.astype(jnp.float32)
  scale = inv_std * gamma
  # Through the ReLU, then y = gamma * x_hat + beta.
  active = x32 * _per_pixel(scale) + _per_pixel(shift) > 0
  d = jnp.where(active, grad.astype(jnp.float32), 0.0)
  x_hat = (x32 - _per_pixel(mean)) * _per_pixel(inv_std)
  sum_d = jnp.sum(d, axis=spatial_axes)                   # (N, C)
  sum_d_x_hat = jnp.sum(d * x_hat, axis=spatial_axes)
  # Through x_hat = (x - mean) * inv_std, whose mean and std are over each group's
  # m elements: dx = inv_std * (g - mean_group(g) - x_hat * mean_group(g * x_hat)), g = gamma d.
  m = x32.size // (n * groups)
  group_mean = lambda v: _group_to_channels(
      jnp.sum(v.reshape(n, groups, -1), axis=-1, keepdims=True) / m, channels)
  mean_g = group_mean(gamma * sum_d)
  mean_g_x_hat = group_mean(gamma * sum_d_x_hat)
  dx = (_per_pixel(scale) * d
        - _per_pixel(inv_std) * (_per_pixel(mean_g) + x_hat * _per_pixel(mean_g_x_hat)))
  return dx.astype(x.dtype), jnp.sum(sum_d_x_hat, axis=0), jnp.sum(sum_d, axis=0)


group_norm_relu.defvjp(_group_norm_relu_fwd, _group_norm_relu_bwd)


def _group_statistics(x: jax.Array, groups: int, epsilon: float):
  """Per (example, channel) mean and 1/std of each channel's group, shape (N, C).

  Per (example, channel) sums of x - s and (x - s)**2 over the spatial axes, where the
  shift s is the channel's value at the first pixel (so the sums do not cancel when a
  channel's mean is large against its spread), combined into group mean and variance by
  the parallel-variance rule. XLA:CPU fuses this far better than a grouped 5-D reshape with
  centred two-pass variance (about 3.5x faster forward and backward on R50x1).
  """
  n, channels = x.shape[0], x.shape[-1]
  spatial_axes = tuple(range(1, x.ndim - 1))
  shift = x[(slice(None),) + (slice(0, 1),) * len(spatial_axes)]
  shifted = x - shift
  shifted_mean = jnp.mean(shifted, axis=spatial_axes)            # (N, C)
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


class NormConv(nn.Module):
  """One of a unit's `a`, `b`, `c`: the GroupNorm that precedes a conv, and the conv.

  The first unit of a block also keeps its projection shortcut under `a/proj`, as in the
  released checkpoints; it is applied to the same normalised input as `a`'s conv.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: Any = "VALID"
  projection: tuple[int, int] | None = None  # (features, strides) of `a/proj`.
  dtype: Any = jnp.float32
  kernels_standardized: bool = False

  def setup(self):
    self.group_norm = GroupNormReLU(dtype=self.dtype)
    self.standardized_conv2d = StdConv(
        self.features, self.kernel_size, self.strides, self.padding, dtype=self.dtype,
        kernel_standardized=self.kernels_standardized)
    if self.projection is not None:
      self.proj = Projection(*self.projection, dtype=self.dtype,
                             kernels_standardized=self.kernels_standardized)

  def norm(self, x: jax.Array) -> jax.Array:
    return self.group_norm(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.standardized_conv2d(x)

  def project(self, x: jax.Array) -> jax.Array:
    return self.proj(x)


class Projection(nn.Module):
  """The 1x1 projection shortcut, `a/proj/standardized_conv2d`."""
  features: int
  strides: int
  dtype: Any = jnp.float32
  kernels_standardized: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return StdConv(self.features, 1, self.strides, dtype=self.dtype,
                   kernel_standardized=self.kernels_standardized,
                   name="standardized_conv2d")(x)


class BottleneckUnit(nn.Module):
  """Pre-activation bottleneck; the 3x3 conv `b` carries the stride."""
  width: int
  strides: int = 1
  project: bool = False
  dtype: Any = jnp.float32
  kernels_standardized: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = 4 * self.width
    projection = (out_features, self.strides) if self.project else None
    common = dict(dtype=self.dtype, kernels_standardized=self.kernels_standardized)
    a = NormConv(self.width, 1, projection=projection, name="a", **common)
    b = NormConv(self.width, 3, self.strides, padding=((1, 1), (1, 1)), name="b", **common)
    c = NormConv(out_features, 1, name="c", **common)
    h = a.norm(x)
    shortcut = a.project(h) if self.project else x
    y = c(c.norm(b(b.norm(a(h)))))
    return y + shortcut.astype(y.dtype)


class Block(nn.Module):
  """`num_units` bottleneck units; the first projects and carries the block's stride.

  With `remat`, each unit keeps only its input for the backward pass and recomputes the
  rest (`nn.remat`): activation memory falls to about one tensor per unit, for up to one
  more forward pass of compute. Parameter names are unchanged. (XLA:CPU keeps the
  recomputation but its scheduler does not lower the peak; see benchmarks/RESULTS.md.)
  """
  num_units: int
  width: int
  strides: int
  dtype: Any = jnp.float32
  kernels_standardized: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    unit = nn.remat(BottleneckUnit) if self.remat else BottleneckUnit
    for i in range(self.num_units):
      x = unit(self.width, self.strides if i == 0 else 1, project=i == 0, dtype=self.dtype,
               kernels_standardized=self.kernels_standardized, name=f"unit{i + 1:02d}")(x)
    return x


class RootBlock(nn.Module):
  """7x7/2 conv on the input padded by 3, then a 3x3/2 max-pool on zero padding 1.

  Zero (not -inf) padding for the pool is what the released weights were trained with;
  after the conv, values can be negative, so the choice changes the outputs.
  """
  width: int
  dtype: Any = jnp.float32
  kernels_standardized: bool = False

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = jnp.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    x = StdConv(self.width, 7, 2, dtype=self.dtype, kernel_standardized=self.kernels_standardized,
                name="standardized_conv2d")(x)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return max_pool_3x3_stride_2(x)


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
  """3x3 max-pool with stride 2 over NHWC `x` (no padding added), in two separable passes.

  The maximum over each row's three columns, then over three rows, each as
  `where(a >= b, a, b)`: the 3x3 window's maximum, and the gradient goes to its first
  maximum in row-major order as XLA's select-and-scatter (`nn.max_pool`) sends it.
  XLA:CPU ran that select-and-scatter backward 9x slower (36 vs 4 ms on R50x1's stem
  output at 128 px, batch 8).
  """
  # NaN wins, as in a max.
  first_max = lambda a, b: jnp.where((a >= b) | jnp.isnan(a), a, b)
  def pool(x, axis):
    out = (x.shape[axis] - 3) // 2 + 1
    taps = [jax.lax.slice_in_dim(x, i, i + 2 * (out - 1) + 1, 2, axis) for i in range(3)]
    return first_max(first_max(taps[0], taps[1]), taps[2])
  return pool(pool(x, 2), 1)


class Head(nn.Module):
  """Zero-initialised 1x1 conv on the pooled features: the checkpoint's `head/conv2d`."""
  num_classes: int

  @nn.compact
  def __call__(self, pre_logits: jax.Array) -> jax.Array:
    x = pre_logits[:, None, None, :]
    x = nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros,
                name="conv2d")(x)
    return x[:, 0, 0, :]


class ResNetV2(nn.Module):
  """BiT ResNet-v2. `num_classes=None` builds the backbone only (logits are None).

  `out` holds named intermediates (`stem`, `block1`..`block4`, `pre_logits`, `logits`) so
  evaluators and linear probes need no second model.
  """
  architecture: Architecture
  num_classes: int | None = None
  dtype: Any = jnp.float32  # Compute dtype; parameters are always float32.
  # Rematerialise each bottleneck unit in the backward pass (less memory, more compute).
  remat: bool = False
  # The `standardized_conv2d` kernels in `params` are already weight-standardized
  # (`standardize_kernels(params)`): how the train step standardizes once per step.
  kernels_standardized: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    del train  # No batch statistics or dropout: the model is the same in both modes.
    arch = self.architecture
    root_width = arch.base_width * arch.width_factor
    out = {}
    standardized = self.kernels_standardized
    x = out["stem"] = RootBlock(root_width, dtype=self.dtype, kernels_standardized=standardized,
                                name="root_block")(images)
    for i, num_units in enumerate(arch.units_per_block):
      name = f"block{i + 1}"
      x = out[name] = Block(num_units, root_width * 2**i, strides=1 if i == 0 else 2,
                            dtype=self.dtype, kernels_standardized=standardized,
                            remat=self.remat, name=name)(x)
    x = GroupNormReLU(dtype=self.dtype, name="group_norm")(x)
    out["pre_logits"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes is None:
      return None, out
    logits = out["logits"] = Head(self.num_classes, name="head")(out["pre_logits"])
    return logits, out


def get_model(name: str, num_classes: int | None = None, *,
              dtype: Any = jnp.float32, remat: bool = False) -> ResNetV2:
  """The model for a release name such as `BiT-M-R50x1` (or a tiny test variant)."""
  return ResNetV2(get_architecture(name), num_classes=num_classes, dtype=dtype, remat=remat)


def get_architecture(name: str) -> Architecture:
  if name not in MODEL_NAMES:
    raise UserError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
  arch = MODEL_NAMES[name]
  return ARCHITECTURES.get(arch) or TINY_ARCHITECTURES[arch]
