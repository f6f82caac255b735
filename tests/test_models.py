"""The BiT ResNet-v2: shapes, sizes, and numerics against an independent numpy reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_jax import models, normalization, npz
from bit_jax.errors import UserError
from tests import reference_bit_numpy as ref
from tests.official_layout import make_official_weights

# Parameter counts with a 1000-class head, as published for the BiT/timm models.
PUBLISHED_MILLIONS = {"R50x1": 25.55, "R50x3": 217.32, "R101x1": 44.54,
                      "R101x3": 387.93, "R152x2": 236.34, "R152x4": 936.53}


def _param_count(model):
  # eval_shape: never allocates, so R152x4 (928M) is counted in milliseconds.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
def test_parameter_counts_match_the_published_ones(arch):
  with_head = _param_count(models.get_model(f"BiT-M-{arch}", num_classes=1000))
  backbone = _param_count(models.get_model(f"BiT-S-{arch}"))
  assert round(with_head / 1e6, 2) == PUBLISHED_MILLIONS[arch]
  feature_dim = 2048 * models.ARCHITECTURES[arch].width_factor
  assert with_head - backbone == feature_dim * 1000 + 1000


def test_backbone_sizes_of_the_smallest_and_largest():
  assert round(_param_count(models.get_model("BiT-M-R50x1")) / 1e6, 1) == 23.5
  assert round(_param_count(models.get_model("BiT-M-R152x4")) / 1e6) == 928


@pytest.mark.parametrize("name,size", [("tiny-R14", 32), ("tiny-R26", 64)])
def test_output_shapes_and_intermediates(name, size):
  model = models.get_model(name, num_classes=7)
  images = jnp.zeros((2, size, size, 3))
  params = jax.jit(model.init)(jax.random.key(0), images)["params"]
  logits, out = model.apply({"params": params}, images)
  assert logits.shape == (2, 7)
  s = size // 4
  assert out["stem"].shape == (2, s, s, 32)
  assert out["block1"].shape == (2, s, s, 128)
  assert out["block2"].shape == (2, s // 2, s // 2, 256)
  assert out["block4"].shape == (2, s // 8, s // 8, 1024)
  assert out["pre_logits"].shape == (2, 1024)
  # The head starts at zero, so a fresh model predicts uniformly.
  np.testing.assert_array_equal(logits, 0.0)


def test_backbone_only_model_returns_features_and_no_logits():
  model = models.get_model("tiny-R14")
  images = jnp.ones((1, 32, 32, 3))
  params = jax.jit(model.init)(jax.random.key(0), images)["params"]
  logits, out = model.apply({"params": params}, images)
  assert logits is None and "head" not in params
  assert out["pre_logits"].shape == (1, 1024)


def test_release_names_share_an_architecture():
  assert models.get_architecture("BiT-S-R101x3") == models.get_architecture("BiT-M-R101x3")
  assert models.get_architecture("BiT-M-R152x4").depth == 152


def test_unknown_model_name_lists_the_valid_ones():
  with pytest.raises(UserError, match="unknown model 'R50'.*BiT-M-R50x1.*tiny-R14"):
    models.get_model("R50")


def _ours(weights, prefix=""):
  """Official `resnet/...` arrays as our params tree (the subtree under `prefix`)."""
  flat = npz.from_official({k[len("resnet/"):]: v for k, v in weights.items()})
  return npz.unflatten({k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)})


@pytest.fixture(scope="module")
def weights():
  return make_official_weights(seed=1, units=(2, 1, 1, 1))


TINY_2111 = models.Architecture((2, 1, 1, 1), 1, base_width=32)


def _rel_err(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / np.max(np.abs(theirs)))


def _stem(params, images):
  model = models.ResNetV2(TINY_2111, num_classes=10)
  return model.apply({"params": params}, images)[1]["stem"]


def test_stem_matches_the_reference(weights):
  images = np.random.default_rng(0).uniform(-1, 1, (2, 19, 23, 3)).astype(np.float32)
  ours = _stem(_ours(weights), images)
  theirs = ref.root_block(weights, images)
  # Odd sizes pin the padding arithmetic; negative conv outputs pin zero (not -inf) padding.
  assert ours.shape == theirs.shape == (2, 5, 6, 32)
  assert (theirs < 0).any() or (ours == 0).any()
  assert _rel_err(ours, theirs) < 1e-5


def test_stem_pools_over_zero_padding(weights):
  # A centre-tap kernel on a -1 image makes every conv output negative, so a pool over
  # -inf padding would return negatives at the border where zero padding returns 0.
  kernel = np.zeros((7, 7, 3, 32), np.float32)
  kernel[3, 3, 0] = 1.0
  images = np.zeros((1, 8, 8, 3), np.float32)
  images[..., 0] = -1.0
  params = _ours(weights)
  params["root_conv"]["kernel"] = kernel
  ours = np.asarray(_stem(params, images))
  theirs = ref.root_block({"resnet/root_block/standardized_conv2d/kernel": kernel}, images)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  conv = ref.conv2d(images, ref.standardize(kernel), 2, ((3, 3), (3, 3)))
  assert (conv < 0).all()
  assert (ours[:, 0, 0] == 0).all()


@pytest.mark.parametrize("prefix,strides,channels,size", [
    ("block1/unit01/", 1, 32, 8),    # projection, stride 1
    ("block1/unit02/", 1, 128, 8),   # identity shortcut
    ("block2/unit01/", 2, 128, 9),   # projection carrying the stride, odd size
])
def test_unit_matches_the_reference(weights, prefix, strides, channels, size):
  x = np.random.default_rng(2).normal(size=(2, size, size, channels)).astype(np.float32)
  width = weights[f"resnet/{prefix}a/standardized_conv2d/kernel"].shape[-1]
  unit = models.BottleneckUnit(width, strides, project=prefix.endswith("unit01/"))
  # The unit's convs take their kernels as given; the model standardizes them.
  params = models.standardize_weights(_ours(weights, prefix))
  ours = unit.apply({"params": params}, x)
  theirs = ref.unit(weights, "resnet/" + prefix, x, strides)
  assert ours.shape == theirs.shape
  assert _rel_err(ours, theirs) < 1e-5


def test_weight_standardization_epsilon_is_pinned():
  # Per-channel variance ~1e-10: eps 1e-10 halves the scale; eps 1e-5 would crush it.
  kernel = np.random.default_rng(3).normal(size=(3, 3, 4, 2)) * 1e-5
  ours = np.asarray(normalization.weight_standardize(jnp.asarray(kernel, jnp.float32)))
  np.testing.assert_allclose(ours, ref.standardize(kernel), rtol=1e-3, atol=1e-4)
  assert 0.3 < np.std(ours) < 0.95


def test_group_norm_epsilon_is_pinned():
  # Group variance 1e-5: eps 1e-5 gives std 1/sqrt(2); eps 1e-6 or 1e-3 would not.
  # Channels alternate +-1, so each 2-channel group has mean 0 and variance exactly 1e-5.
  # A bias of 10 keeps every output positive, so the ReLU passes it unchanged.
  signs = np.where(np.arange(64) % 2 == 0, 1.0, -1.0)
  x = np.broadcast_to(signs, (1, 4, 4, 64)) * np.sqrt(1e-5)
  scale, bias = np.ones(64), np.full(64, 10.0)
  params = {"scale": scale, "bias": bias}
  ours = np.asarray(models.GroupNormAct().apply({"params": params}, x.astype(np.float32)))
  np.testing.assert_allclose(ours, ref.group_norm(x, scale, bias), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.std(ours), 1 / np.sqrt(2), rtol=1e-3)


def test_group_norm_matches_the_reference_with_a_large_mean():
  # Two-pass statistics: a mean 1000 times the spread does not cancel (E[x^2] - E[x]^2 in
  # float32 would lose about 10% of the variance here).
  x = np.random.default_rng(4).normal(100.0, 0.1, (2, 5, 6, 64)).astype(np.float32)
  scale = np.random.default_rng(5).uniform(0.5, 1.5, 64)
  bias = np.random.default_rng(6).normal(size=64)
  ours = normalization.group_norm(jnp.asarray(x), scale, bias)
  np.testing.assert_allclose(ours, ref.group_norm(x, scale, bias), rtol=1e-3, atol=1e-3)


def test_bfloat16_compute_stays_close_and_keeps_float32_params():
  model32 = models.get_model("tiny-R14", num_classes=5)
  model16 = models.get_model("tiny-R14", num_classes=5, dtype=jnp.bfloat16)
  images = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  params = jax.jit(model16.init)(jax.random.key(1), images)["params"]
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  _, out32 = model32.apply({"params": params}, images)
  _, out16 = model16.apply({"params": params}, images)
  assert out16["block4"].dtype == jnp.bfloat16
  a, b = np.asarray(out16["pre_logits"]), np.asarray(out32["pre_logits"])
  # bf16 keeps ~3 significant digits; through 14 layers that is a few percent overall.
  assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05


def _images(seed, size=32):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)),
                     jnp.float32)


def test_forward_mode_autodiff_runs_through_the_plain_model():
  model = models.get_model("tiny-R14", num_classes=3, kernels="plain")
  images = _images(10)
  params = jax.jit(model.init)(jax.random.key(3), images)["params"]
  tangent = jax.tree.map(lambda p: jnp.full_like(p, 1e-2), params)
  pre_logits = lambda p: model.apply({"params": p}, images)[1]["pre_logits"]
  _, jvp = jax.jit(lambda p, t: jax.jvp(pre_logits, (p,), (t,)))(params, tangent)
  # Forward mode agrees with reverse mode: <J t, v> == <t, J^T v>.
  v = jnp.asarray(np.random.default_rng(11).normal(size=jvp.shape), jnp.float32)
  cotangent = jax.jit(lambda p, v: jax.vjp(pre_logits, p)[1](v)[0])(params, v)
  reverse = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(cotangent),
                                                 jax.tree.leaves(tangent)))
  np.testing.assert_allclose(jnp.vdot(jvp, v), reverse, rtol=1e-3)
  assert float(jnp.abs(jvp).max()) > 0


def test_plain_kernels_are_the_defaults_and_auto_picks_per_backend():
  plain = models.get_model("tiny-R14", kernels="plain")
  assert (plain.conv, plain.norm_act, plain.pool, plain.weight_standardization) == (
      models.Conv, models.GroupNormAct, models.max_pool_zero_padded,
      models.standardize_weights)
  auto = models.get_model("tiny-R14")
  expected = "cpu" if jax.default_backend() == "cpu" else "plain"
  assert auto == models.get_model("tiny-R14", kernels=expected)
  with pytest.raises(UserError, match="unknown kernels 'fast'; valid: auto, plain, cpu"):
    models.get_model("tiny-R14", kernels="fast")


def test_auto_kernels_follow_the_devices_compiled_for_not_the_default_backend():
  # A CPU process compiling ahead for TPU or GPU devices (benchmarks/targets.py) passes their
  # platform: their program gets the plain model whatever this process's backend is.
  cpu = models.get_model("tiny-R14", kernels="cpu")
  plain = models.get_model("tiny-R14", kernels="plain")
  assert cpu != plain
  for platform in ("tpu", "gpu"):
    assert models.get_model("tiny-R14", platform=platform) == plain
    assert models.resolve_kernels("auto", platform) == "plain"
  assert models.get_model("tiny-R14", platform="cpu") == cpu
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  assert models.resolve_kernels("auto", mesh.devices.flat[0].platform) == (
      "cpu" if jax.default_backend() == "cpu" else "plain")
  # An explicit choice is kept on any platform.
  assert models.get_model("tiny-R14", kernels="cpu", platform="tpu") == cpu
  assert models.get_model("tiny-R14", kernels="plain", platform="cpu") == plain


def test_initial_kernels_keep_he_scale_not_the_standardized_one():
  # Under weight standardization the kernel's scale sets the effective learning rate
  # (lr / |w|^2): storing standardized kernels at init trained the demo far worse.
  model = models.get_model("tiny-R14", num_classes=3)
  params = jax.jit(model.init)(jax.random.key(5), _images(13))["params"]
  kernel = np.asarray(params["block2"]["unit01"]["conv2"]["kernel"])
  he_std = np.sqrt(2 / np.prod(kernel.shape[:3]))
  assert 0.8 * he_std < kernel.std() < 1.2 * he_std


def test_hoisted_weight_standardization_gives_the_same_outputs():
  model = models.get_model("tiny-R14", num_classes=5)
  images = _images(6)
  params = jax.jit(model.init)(jax.random.key(2), images)["params"]
  # A non-zero head, so logits are compared too.
  params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(3),
                                                     params["head"]["kernel"].shape)
  served_model, served = models.for_inference(model, params)
  assert not served_model.weight_standardization
  kernel = np.asarray(served["block1"]["unit01"]["conv2"]["kernel"])
  columns = kernel.reshape(-1, kernel.shape[-1])
  np.testing.assert_allclose(columns.mean(0), 0, atol=1e-6)
  np.testing.assert_allclose(columns.std(0), 1, rtol=1e-4)
  np.testing.assert_array_equal(served["head"]["kernel"], params["head"]["kernel"])
  expected, _ = model.apply({"params": params}, images)
  ours, _ = served_model.apply({"params": served}, images)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
  # Already hoisted: nothing is standardized twice.
  assert models.hoist_weight_standardization(served_model)[1](served) is served


class _UnitWithAnExtraConv(models.BottleneckUnit):
  """A researcher's change: one more 3x3 conv on the residual branch's output."""

  @nn.compact
  def __call__(self, x):
    y = super().__call__(x)
    return self.conv(y.shape[-1], (3, 3), padding=((1, 1), (1, 1)), name="extra")(y)


def test_a_new_conv_is_weight_standardized_by_construction():
  model = models.get_model("tiny-R14", num_classes=3).clone(unit=_UnitWithAnExtraConv)
  images = _images(12)
  params = jax.jit(model.init)(jax.random.key(4), images)["params"]
  extra = params["block2"]["unit01"]["extra"]["kernel"]
  standardized = models.standardize_weights(params)["block2"]["unit01"]["extra"]["kernel"]
  np.testing.assert_allclose(np.asarray(standardized).reshape(-1, extra.shape[-1]).std(0), 1,
                             rtol=1e-4)
  # In the forward pass too: scaling the raw kernel changes nothing after standardization.
  scaled = jax.tree.map(lambda x: x, params)
  scaled["block2"]["unit01"]["extra"]["kernel"] = 3.0 * extra + 1.0
  pre_logits = lambda p: model.apply({"params": p}, images)[1]["pre_logits"]
  np.testing.assert_allclose(pre_logits(scaled), pre_logits(params), rtol=1e-4, atol=1e-5)
  hoisted, standardize = models.hoist_weight_standardization(model)
  np.testing.assert_allclose(
      hoisted.apply({"params": standardize(scaled)}, images)[1]["pre_logits"],
      pre_logits(params), rtol=1e-4, atol=1e-5)


def test_head_bias_init_sets_the_initial_logits(monkeypatch):
  # big_vision's bit_i21k starts the 21,843 sigmoids at bias -10; the default stays zero.
  # One unit instead of tiny-R14's four: it compiles in a fraction of the time.
  monkeypatch.setitem(models.TINY_ARCHITECTURES, "test-R5", models.Architecture((1,), 1, 32))
  monkeypatch.setitem(models.MODEL_NAMES, "test-R5", "test-R5")
  assert models.get_model("test-R5", num_classes=5).head_bias_init == 0.0
  model = models.get_model("test-R5", num_classes=5, kernels="plain", head_bias_init=-10.0)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  params = jax.jit(model.init)(jax.random.key(0), images)["params"]
  np.testing.assert_array_equal(params["head"]["bias"], np.full(5, -10.0, np.float32))
  np.testing.assert_array_equal(params["head"]["kernel"], 0.0)  # Still a zero kernel.
  logits, _ = jax.jit(model.apply)({"params": params}, images)
  np.testing.assert_array_equal(logits, np.full((2, 5), -10.0, np.float32))
