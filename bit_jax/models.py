"""ResNet-v2 with GroupNorm and Weight Standardization: the BiT model family.

Kolesnikov et al. 2019, "Big Transfer (BiT)", Sections 3.1 and 4.3: a ResNet-v2 (He et al.
2016, "Identity Mappings in Deep Residual Networks", pre-activation units) whose batch norms
are GroupNorm(32) and whose convolutions all have weight-standardized kernels.

    model = get_model("BiT-M-R50x1", num_classes=10)
    logits, out = model.apply({"params": params}, images)   # NHWC in [-1, 1]

The convolution, the norm + activation in front of each convolution, and the stem's pooling
are module fields: change one in a line, e.g. `model.clone(norm_act=functools.partial(
GroupNormAct, act=nn.gelu))`. The defaults are the plain formulations, which accelerators run;
`get_model` may choose XLA:CPU-tuned equivalents from `bit_jax.cpu_kernels` on CPU.
Parameter names are this module's; `bit_jax.npz` maps them to the released checkpoints' keys.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bit_jax import cpu_kernels
from bit_jax.errors import UserError
from bit_jax.normalization import GN_EPSILON, GROUPS, group_norm, standardize_weights

ModuleDef = Any  # A flax module class, or a functools.partial of one.


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
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # Compute dtypes by config name.


Conv = functools.partial(nn.Conv, use_bias=False, kernel_init=nn.initializers.he_normal())


class GroupNormAct(nn.Module):
  """GroupNorm(32) and the activation after it: what precedes every conv in ResNet-v2."""
  act: Callable[[jax.Array], jax.Array] = nn.relu
  groups: int = GROUPS
  epsilon: float = GN_EPSILON
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return self.act(group_norm(x.astype(self.dtype), scale, bias, self.groups, self.epsilon))


def max_pool_zero_padded(x: jax.Array) -> jax.Array:
  """The stem's 3x3/2 max-pool over `x` padded by one zero on each side.

  Zero, not -inf: the released weights were trained with it, and after the conv values can
  be negative, so the choice changes the outputs.
  """
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class BottleneckUnit(nn.Module):
  """The pre-activation bottleneck unit; the 3x3 conv carries the stride.

      h = norm_act(x)
      shortcut = conv1x1/s(h) if project else x          (the projection sees h, not x)
      return shortcut + conv1x1(norm_act(conv3x3/s(norm_act(conv1x1(h)))))
  """
  width: int
  strides: int = 1
  project: bool = False  # A 1x1 projection shortcut: the first unit of each block.
  conv: ModuleDef = Conv
  norm_act: ModuleDef = GroupNormAct
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(self.conv, dtype=self.dtype)
    norm_act = functools.partial(self.norm_act, dtype=self.dtype)
    out_features = 4 * self.width
    h = norm_act(name="norm1")(x)
    shortcut = x
    if self.project:
      shortcut = conv(out_features, (1, 1), self.strides, padding="VALID", name="conv_proj")(h)
    y = conv(self.width, (1, 1), padding="VALID", name="conv1")(h)
    y = conv(self.width, (3, 3), self.strides, padding=((1, 1), (1, 1)),
             name="conv2")(norm_act(name="norm2")(y))
    y = conv(out_features, (1, 1), padding="VALID", name="conv3")(norm_act(name="norm3")(y))
    return y + shortcut.astype(y.dtype)


class Block(nn.Module):
  """`num_units` bottleneck units; the first projects and carries the block's stride.

  With `remat`, each unit keeps only its input for the backward pass and recomputes the
  rest: activation memory falls to about one tensor per unit, for up to one more forward
  pass of compute.
  """
  num_units: int
  width: int
  strides: int
  unit: ModuleDef = BottleneckUnit
  conv: ModuleDef = Conv
  norm_act: ModuleDef = GroupNormAct
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    unit = nn.remat(self.unit) if self.remat else self.unit
    for i in range(self.num_units):
      x = unit(self.width, self.strides if i == 0 else 1, project=i == 0, conv=self.conv,
               norm_act=self.norm_act, dtype=self.dtype, name=f"unit{i + 1:02d}")(x)
    return x


class ResNetV2(nn.Module):
  """BiT's ResNet-v2. `num_classes=None` builds the backbone only (logits are None).

  Root: 7x7/2 conv, 3x3/2 max-pool. Four blocks of bottleneck units, widths 64, 128, 256,
  512 (x width_factor), the last three halving the resolution. Then GroupNorm + ReLU, the
  global mean, and a zero-initialised dense head. `out` holds named intermediates (`stem`,
  `block1`..`block4`, `pre_logits`, `logits`) so evaluators need no second model.
  """
  architecture: Architecture
  num_classes: int | None = None
  unit: ModuleDef = BottleneckUnit
  conv: ModuleDef = Conv  # Takes its kernel as given; weight standardization is below.
  norm_act: ModuleDef = GroupNormAct
  pool: Callable[[jax.Array], jax.Array] = max_pool_zero_padded
  dtype: Any = jnp.float32  # Compute dtype; parameters are always float32.
  remat: bool = False  # Recompute each unit's activations in the backward pass.
  # params -> params with every conv kernel standardized, applied in each call. None: the
  # params hold them standardized already, as `hoist_weight_standardization` arranges.
  weight_standardization: Callable[[Any], Any] | None = standardize_weights
  # The head's initial bias. 0: BiT's release. big_vision's `bit_i21k` config sets -10
  # (`init_head_bias`) so a 21,843-way sigmoid loss starts small.
  head_bias_init: float = 0.0

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    del train  # No batch statistics or dropout: the model is the same in both modes.
    conv = self.conv
    # Not while initializing: map_variables would store the standardized kernels, whose
    # unit scale (not He's) would shrink every effective learning rate (lr / |w|^2 under WS).
    if self.weight_standardization is not None and not self.is_initializing():
      conv = nn.map_variables(conv, "params", trans_in_fn=self.weight_standardization,
                              init=True)
    arch = self.architecture
    width = arch.base_width * arch.width_factor
    out = {}
    x = conv(width, (7, 7), 2, padding=((3, 3), (3, 3)), dtype=self.dtype,
             name="root_conv")(images)
    x = out["stem"] = self.pool(x)
    for i, num_units in enumerate(arch.units_per_block):
      name = f"block{i + 1}"
      x = out[name] = Block(num_units, width * 2**i, strides=1 if i == 0 else 2,
                            unit=self.unit, conv=conv, norm_act=self.norm_act,
                            dtype=self.dtype, remat=self.remat, name=name)(x)
    x = self.norm_act(dtype=self.dtype, name="norm")(x)
    out["pre_logits"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes is None:
      return None, out
    logits = out["logits"] = nn.Dense(
        self.num_classes, kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(self.head_bias_init), name="head")(out["pre_logits"])
    return logits, out


def hoist_weight_standardization(model: ResNetV2
                                 ) -> tuple[ResNetV2, Callable[[Any], Any]]:
  """(model taking its conv kernels as given, the function that standardizes them).

  For callers that apply one set of parameters many times: the train step standardizes
  once per step (and backpropagates through it once) for all its micro-batches, evaluation
  once per pass instead of in every forward call. Outputs and gradients are unchanged.
  """
  standardize = model.weight_standardization
  if standardize is None:
    return model, lambda params: params
  return model.clone(weight_standardization=None), standardize


def for_inference(model: ResNetV2, params: Any) -> tuple[ResNetV2, Any]:
  """(model, params) for a pass of many batches with fixed parameters: the kernels
  standardized once, here, at the cost of one more copy of the parameters."""
  inner, standardize = hoist_weight_standardization(model)
  return inner, jax.jit(standardize)(params)


KERNELS = ("auto", "plain", "cpu")


def get_model(name: str, num_classes: int | None = None, *, dtype: Any = jnp.float32,
              remat: bool = False, kernels: str = "auto", head_bias_init: float = 0.0,
              platform: str | None = None) -> ResNetV2:
  """The model for a release name such as `BiT-M-R50x1` (or a tiny test variant).

  `dtype` is the compute dtype, or its name in `DTYPES`; parameters are always float32.
  `kernels`: `plain` builds the model above as written; `cpu` swaps in the XLA:CPU-tuned
  equivalents of `bit_jax.cpu_kernels`; `auto` is `resolve_kernels("auto", platform)`.
  `platform` names the devices the model is compiled for (the loops pass their mesh's,
  `mesh.devices.flat[0].platform`); default: JAX's default backend.
  """
  kernels = resolve_kernels(kernels, platform)
  ops = cpu_kernels.OPS if kernels == "cpu" else {}
  dtype = compute_dtype(dtype) if isinstance(dtype, str) else dtype
  return ResNetV2(get_architecture(name), num_classes=num_classes, dtype=dtype, remat=remat,
                  head_bias_init=head_bias_init, **ops)


def resolve_kernels(kernels: str, platform: str | None = None) -> str:
  """`plain` or `cpu`: `kernels` itself, or for `auto` `cpu` when the program runs on CPU
  devices and `plain` on any other. The devices' `platform`, not the process's default
  backend, decides: a process compiling ahead for TPU or GPU devices (benchmarks/targets.py)
  has the CPU as its default backend, and its program must get the plain model."""
  if kernels not in KERNELS:
    raise UserError(f"unknown kernels {kernels!r}; valid: {', '.join(KERNELS)}")
  if kernels != "auto":
    return kernels
  return "cpu" if (platform or jax.default_backend()) == "cpu" else "plain"


def compute_dtype(name: str) -> Any:
  """The compute dtype a config names (`float32`, `bfloat16`); parameters stay float32."""
  if name not in DTYPES:
    raise UserError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
  return DTYPES[name]


def get_architecture(name: str) -> Architecture:
  if name not in MODEL_NAMES:
    raise UserError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
  arch = MODEL_NAMES[name]
  return ARCHITECTURES.get(arch) or TINY_ARCHITECTURES[arch]
