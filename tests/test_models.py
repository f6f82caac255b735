"""The BiT ResNet-v2: shapes, sizes, and numerics against an independent numpy reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_jax import models, npz
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
  params = model.init(jax.random.key(0), images)["params"]
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
  params = model.init(jax.random.key(0), images)["params"]
  logits, out = model.apply({"params": params}, images)
  assert logits is None and "head" not in params
  assert out["pre_logits"].shape == (1, 1024)


def test_release_names_share_an_architecture():
  assert models.get_architecture("BiT-S-R101x3") == models.get_architecture("BiT-M-R101x3")
  assert models.get_architecture("BiT-M-R152x4").depth == 152


def test_unknown_model_name_lists_the_valid_ones():
  with pytest.raises(UserError, match="unknown model 'R50'.*BiT-M-R50x1.*tiny-R14"):
    models.get_model("R50")


def _subtree(weights, prefix):
  """Official keys under `resnet/<prefix>` as a nested params tree."""
  full = "resnet/" + prefix
  return npz.unflatten({k[len(full):]: v for k, v in weights.items() if k.startswith(full)})


@pytest.fixture(scope="module")
def weights():
  return make_official_weights(seed=1, units=(2, 1, 1, 1))


def _rel_err(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / np.max(np.abs(theirs)))


def test_stem_matches_the_reference(weights):
  images = np.random.default_rng(0).uniform(-1, 1, (2, 19, 23, 3)).astype(np.float32)
  ours = models.RootBlock(32).apply({"params": _subtree(weights, "root_block/")}, images)
  theirs = ref.root_block(weights, images)
  # Odd sizes pin the padding arithmetic; negative conv outputs pin zero (not -inf) padding.
  assert ours.shape == theirs.shape == (2, 5, 6, 32)
  assert (theirs < 0).any() or (ours == 0).any()
  assert _rel_err(ours, theirs) < 1e-5


def test_stem_pools_over_zero_padding():
  # A centre-tap kernel on a -1 image makes every conv output negative, so a pool over
  # -inf padding would return negatives at the border where zero padding returns 0.
  kernel = np.zeros((7, 7, 3, 32), np.float32)
  kernel[3, 3, 0] = 1.0
  images = np.zeros((1, 8, 8, 3), np.float32)
  images[..., 0] = -1.0
  params = {"standardized_conv2d": {"kernel": kernel}}
  ours = np.asarray(models.RootBlock(32).apply({"params": params}, images))
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
  ours = unit.apply({"params": _subtree(weights, prefix)}, x)
  theirs = ref.unit(weights, "resnet/" + prefix, x, strides)
  assert ours.shape == theirs.shape
  assert _rel_err(ours, theirs) < 1e-5


def test_weight_standardization_epsilon_is_pinned():
  # Per-channel variance ~1e-10: eps 1e-10 halves the scale; eps 1e-5 would crush it.
  kernel = np.random.default_rng(3).normal(size=(3, 3, 4, 2)) * 1e-5
  ours = np.asarray(models.weight_standardize(jnp.asarray(kernel, jnp.float32)))
  np.testing.assert_allclose(ours, ref.standardize(kernel), rtol=1e-3, atol=1e-4)
  assert 0.3 < np.std(ours) < 0.95


def test_group_norm_epsilon_is_pinned():
  # Group variance 1e-5: eps 1e-5 gives std 1/sqrt(2); eps 1e-6 or 1e-3 would not.
  # Channels alternate +-1, so each 2-channel group has mean 0 and variance exactly 1e-5.
  # A beta of 10 keeps every output positive, so the ReLU passes it unchanged.
  signs = np.where(np.arange(64) % 2 == 0, 1.0, -1.0)
  x = np.broadcast_to(signs, (1, 4, 4, 64)) * np.sqrt(1e-5)
  gamma, beta = np.ones(64), np.full(64, 10.0)
  params = {"gamma": gamma, "beta": beta}
  ours = np.asarray(models.GroupNormReLU().apply({"params": params}, x.astype(np.float32)))
  np.testing.assert_allclose(ours, ref.group_norm(x, gamma, beta), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.std(ours), 1 / np.sqrt(2), rtol=1e-3)


def _group_norm_relu_by_autodiff(x, gamma, beta):
  """The textbook GroupNorm + ReLU, for jax.vjp to differentiate: grouped 5-D statistics."""
  n, h, w, c = x.shape
  grouped = x.reshape(n, h, w, models.GROUPS, c // models.GROUPS)
  mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
  var = jnp.square(grouped - mean).mean(axis=(1, 2, 4), keepdims=True)
  x_hat = ((grouped - mean) * jax.lax.rsqrt(var + models.GN_EPSILON)).reshape(x.shape)
  return jax.nn.relu(x_hat * gamma + beta)


@pytest.mark.parametrize("spread,offset", [(2.0, 1.0), (0.5, -3.0)])
def test_group_norm_relu_gradient_matches_autodiff(spread, offset):
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(offset, spread, (3, 5, 6, 64)), jnp.float32)
  gamma = jnp.asarray(rng.uniform(0.5, 1.5, 64), jnp.float32)
  beta = jnp.asarray(rng.normal(size=64), jnp.float32)
  grad = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  expected, expected_vjp = jax.vjp(_group_norm_relu_by_autodiff, x, gamma, beta)
  ours, ours_vjp = jax.vjp(models.group_norm_relu, x, gamma, beta)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
  assert 0.2 < float(jnp.mean(ours > 0)) < 0.8  # The ReLU's mask is part of the test.
  for name, a, b in zip(("x", "gamma", "beta"), ours_vjp(grad), expected_vjp(grad)):
    scale = float(jnp.max(jnp.abs(b)))
    assert float(jnp.max(jnp.abs(a - b))) < 1e-5 * scale, name


def test_group_norm_relu_keeps_bfloat16_activations_in_bfloat16():
  x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 4, 4, 32)), jnp.bfloat16)
  gamma, beta = jnp.ones(32), jnp.zeros(32)
  y, vjp = jax.vjp(models.group_norm_relu, x, gamma, beta)
  dx, dgamma, _ = vjp(jnp.ones_like(y))
  assert y.dtype == dx.dtype == jnp.bfloat16 and dgamma.dtype == jnp.float32
  expected = _group_norm_relu_by_autodiff(x.astype(jnp.float32), gamma, beta)
  np.testing.assert_allclose(y.astype(jnp.float32), expected, atol=0.05)


def test_max_pool_matches_reduce_window_values_and_gradients():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(2, 9, 12, 5)).astype(np.float32)
  x[0, 2:5, 2:6, 0] = 1.5          # ties inside and across windows
  x[1, :, :, 1] = 0.0              # a constant channel: every window is one tie
  x = jnp.asarray(x)
  reduce_window = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
  expected, expected_vjp = jax.vjp(reduce_window, x)
  ours, ours_vjp = jax.vjp(models.max_pool_3x3_stride_2, x)
  np.testing.assert_array_equal(ours, expected)
  grad = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
  # The same element of each window gets the gradient; sums of overlaps may round apart.
  np.testing.assert_allclose(ours_vjp(grad)[0], expected_vjp(grad)[0], rtol=0, atol=1e-6)
  assert bool(jnp.isnan(models.max_pool_3x3_stride_2(x.at[0, 0, 0, 0].set(jnp.nan))[0, 0, 0, 0]))


def test_bfloat16_compute_stays_close_and_keeps_float32_params():
  model32 = models.get_model("tiny-R14", num_classes=5)
  model16 = models.get_model("tiny-R14", num_classes=5, dtype=jnp.bfloat16)
  images = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  params = model16.init(jax.random.key(1), images)["params"]
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  _, out32 = model32.apply({"params": params}, images)
  _, out16 = model16.apply({"params": params}, images)
  assert out16["block4"].dtype == jnp.bfloat16
  a, b = np.asarray(out16["pre_logits"]), np.asarray(out32["pre_logits"])
  # bf16 keeps ~3 significant digits; through 14 layers that is a few percent overall.
  assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05


def test_for_inference_standardizes_once_and_keeps_the_outputs():
  model = models.get_model("tiny-R14", num_classes=5)
  images = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  params = model.init(jax.random.key(2), images)["params"]
  served_model, served = models.for_inference(model, params)
  assert served_model.kernels_standardized
  kernel = np.asarray(served["block1"]["unit01"]["b"]["standardized_conv2d"]["kernel"])
  columns = kernel.reshape(-1, kernel.shape[-1])
  np.testing.assert_allclose(columns.mean(0), 0, atol=1e-6)
  np.testing.assert_allclose(columns.std(0), 1, rtol=1e-4)
  np.testing.assert_array_equal(served["head"]["conv2d"]["kernel"],
                                params["head"]["conv2d"]["kernel"])
  _, expected = model.apply({"params": params}, images)
  _, out = served_model.apply({"params": served}, images)
  np.testing.assert_allclose(out["pre_logits"], expected["pre_logits"], rtol=1e-5, atol=1e-5)
  # Already standardized: nothing is standardized twice.
  assert models.for_inference(served_model, served) == (served_model, served)
