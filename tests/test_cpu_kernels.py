"""The XLA:CPU-tuned kernels against autodiff of the plain formulations they replace."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_jax import cpu_kernels, models, normalization

# Each kernel against the plain formulation is two programs that sum float32 in other orders.
# The tolerances below are >= 4x the differences measured here (an AVX2 EPYC, with XLA's
# default and with --xla_cpu_max_isa=AVX2 or SSE4_2, which emulate other CPUs' kernels),
# relative to the compared quantity's scale; a wrong kernel is off by O(1) of it.


def _plain_group_norm_relu(x, scale, bias):
  return jax.nn.relu(normalization.group_norm(x, scale, bias))


@pytest.mark.parametrize("spread,offset", [(2.0, 1.0), (0.5, -3.0)])
def test_group_norm_relu_values_and_gradients_match_autodiff_of_the_plain_one(spread, offset):
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(offset, spread, (3, 5, 6, 64)), jnp.float32)
  scale = jnp.asarray(rng.uniform(0.5, 1.5, 64), jnp.float32)
  bias = jnp.asarray(rng.normal(size=64), jnp.float32)
  grad = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  expected, expected_vjp = jax.vjp(_plain_group_norm_relu, x, scale, bias)
  ours, ours_vjp = jax.vjp(cpu_kernels.group_norm_relu, x, scale, bias)
  # Measured: 3.1e-6 at values up to 4.8 (0.24 of this tolerance).
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
  assert 0.2 < float(jnp.mean(ours > 0)) < 0.8  # The ReLU's mask is part of the test.
  for name, a, b in zip(("x", "scale", "bias"), ours_vjp(grad), expected_vjp(grad)):
    scale_of_b = float(jnp.max(jnp.abs(b)))  # Measured: <= 6.1e-7 of it.
    assert float(jnp.max(jnp.abs(a - b))) < 1e-5 * scale_of_b, name


def test_group_norm_relu_keeps_bfloat16_activations_in_bfloat16():
  x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 4, 4, 32)), jnp.bfloat16)
  scale, bias = jnp.ones(32), jnp.zeros(32)
  y, vjp = jax.vjp(cpu_kernels.group_norm_relu, x, scale, bias)
  dx, dscale, _ = vjp(jnp.ones_like(y))
  assert y.dtype == dx.dtype == jnp.bfloat16 and dscale.dtype == jnp.float32
  expected = _plain_group_norm_relu(x.astype(jnp.float32), scale, bias)
  # bfloat16 keeps 8 significant bits: y rounds by up to 2^-9 of |y| <= 3.2, 6e-3 (measured
  # 7.5e-3 with the float32 statistics' rounding).
  np.testing.assert_allclose(y.astype(jnp.float32), expected, atol=0.05)


@pytest.mark.parametrize("kernel_size,strides,padding", [
    ((1, 1), 1, "VALID"), ((1, 1), 2, "VALID"), ((3, 3), 2, ((1, 1), (1, 1))),
    ((7, 7), 2, ((3, 3), (3, 3)))])
def test_conv_values_and_gradients_match_the_plain_conv(kernel_size, strides, padding):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, 10, 8)), jnp.float32)  # Odd size: strided edges.
  plain = models.Conv(16, kernel_size, strides, padding=padding)
  tuned = cpu_kernels.Conv(16, kernel_size, strides, padding=padding)
  params = jax.jit(plain.init)(jax.random.key(0), x)["params"]
  assert jax.tree.map(jnp.shape, jax.jit(tuned.init)(jax.random.key(0), x)["params"]) == (
      jax.tree.map(jnp.shape, params))
  expected, expected_vjp = jax.vjp(lambda p, x: plain.apply({"params": p}, x), params, x)
  ours, ours_vjp = jax.vjp(lambda p, x: tuned.apply({"params": p}, x), params, x)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)  # Measured: 2.4e-7.
  grad = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
  # Measured: 1.5e-5 at gradients up to 48 (0.04 of this tolerance).
  for a, b in zip(jax.tree.leaves(ours_vjp(grad)), jax.tree.leaves(expected_vjp(grad))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_weight_standardization_values_and_gradients_match_autodiff_of_the_plain_one():
  rng = np.random.default_rng(4)
  kernel = jnp.asarray(rng.normal(0.3, 2.0, (3, 3, 8, 5)), jnp.float32)
  grad = jnp.asarray(rng.normal(size=kernel.shape), jnp.float32)
  expected, expected_vjp = jax.vjp(normalization.weight_standardize, kernel)
  ours, ours_vjp = jax.vjp(cpu_kernels.weight_standardize, kernel)
  # Measured: 7.2e-7 at values up to 3.2, 3.6e-7 in the gradient (<= 0.03 of these).
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours_vjp(grad)[0], expected_vjp(grad)[0], rtol=1e-4, atol=1e-5)
  params = {"conv": {"kernel": kernel}, "head": {"kernel": kernel[0, 0]}}
  standardized = cpu_kernels.standardize_weights(params)
  np.testing.assert_array_equal(standardized["head"]["kernel"], kernel[0, 0])  # Not 4-D.
  np.testing.assert_allclose(standardized["conv"]["kernel"], expected, rtol=1e-5, atol=1e-5)


def test_the_cpu_model_computes_the_plain_model_and_its_gradient():
  plain = models.get_model("tiny-R14", num_classes=4, kernels="plain")
  tuned = models.get_model("tiny-R14", num_classes=4, kernels="cpu")
  assert tuned.norm_act is cpu_kernels.GroupNormReLU
  images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  labels = jax.nn.one_hot(jnp.array([1, 3]), 4)
  params = jax.jit(plain.init)(jax.random.key(0), images)["params"]
  assert jax.tree.structure(jax.jit(tuned.init)(jax.random.key(0), images)["params"]) == (
      jax.tree.structure(params))
  params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1),
                                                     params["head"]["kernel"].shape)

  def loss(model, p):
    logits, _ = model.apply({"params": p}, images)
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))

  expected, expected_grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  ours, grads = jax.jit(jax.value_and_grad(lambda p: loss(tuned, p)))(params)
  # Measured: the losses 1.1e-6 apart relatively, each gradient leaf <= 3.5e-6 of its largest
  # element (a ReLU that this rounding flipped would move a leaf by more; none is this close).
  np.testing.assert_allclose(ours, expected, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=0, atol=1e-4 * float(np.max(np.abs(b))) + 1e-7), grads, expected_grads)
