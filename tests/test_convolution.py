"""Every algorithm `conv2d` picks computes XLA's convolution; CPU alone takes the others."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from bit_jax import convolution

SAME = ((1, 1), (1, 1))


def _assert_same_values_and_gradients(ours_fn, xla_fn, x, kernel, rtol=1e-5):
  expected, expected_vjp = jax.vjp(xla_fn, x, kernel)
  ours, ours_vjp = jax.vjp(ours_fn, x, kernel)
  assert ours.shape == expected.shape
  scale = float(jnp.max(jnp.abs(expected)))
  np.testing.assert_allclose(ours, expected, rtol=0, atol=rtol * scale)
  grad = jnp.asarray(np.random.default_rng(1).normal(size=expected.shape), jnp.float32)
  for name, a, b in zip(("x", "kernel"), ours_vjp(grad), expected_vjp(grad)):
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * float(jnp.max(jnp.abs(b))),
                               err_msg=name)


def _inputs(x_shape, kernel_shape, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=x_shape), jnp.float32),
          jnp.asarray(rng.normal(size=kernel_shape), jnp.float32))


@pytest.mark.parametrize("x_shape,strides", [((2, 7, 9, 16), 1), ((2, 8, 8, 16), 2),
                                             ((1, 9, 8, 8), 2)])
def test_im2col_product_is_the_convolution(x_shape, strides):
  x, kernel = _inputs(x_shape, (3, 3, x_shape[-1], 24))
  _assert_same_values_and_gradients(
      lambda x, k: convolution.conv2d_as_product(x, k, strides, SAME),
      lambda x, k: convolution.xla_conv2d(x, k, strides, SAME), x, kernel)


def test_im2col_product_of_a_valid_7x7_stride_2_is_the_convolution():
  x, kernel = _inputs((2, 19, 23, 3), (7, 7, 3, 8))   # the stem's shape of problem
  _assert_same_values_and_gradients(
      lambda x, k: convolution.conv2d_as_product(x, k, 2, "VALID"),
      lambda x, k: convolution.xla_conv2d(x, k, 2, "VALID"), x, kernel)


@pytest.mark.parametrize("x_shape,features", [((2, 8, 6, 16), 12), ((1, 4, 4, 8), 8),
                                              ((3, 2, 10, 5), 7)])
def test_winograd_is_the_convolution(x_shape, features):
  x, kernel = _inputs(x_shape, (3, 3, x_shape[-1], features))
  _assert_same_values_and_gradients(
      convolution.conv3x3_winograd,
      lambda x, k: convolution.xla_conv2d(x, k, 1, SAME), x, kernel)


def test_winograd_keeps_bfloat16_in_bfloat16():
  x, kernel = _inputs((2, 4, 4, 8), (3, 3, 8, 8))
  out = convolution.conv3x3_winograd(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  expected = convolution.xla_conv2d(x, kernel, 1, SAME)
  assert float(jnp.max(jnp.abs(out - expected))) < 0.05 * float(jnp.max(jnp.abs(expected)))


def test_1x1_convolutions_are_products_on_every_backend():
  x, kernel = _inputs((2, 6, 7, 16), (1, 1, 16, 8))
  for strides in (1, 2):
    np.testing.assert_allclose(convolution.conv2d(x, kernel, strides, "VALID"),
                               convolution.xla_conv2d(x, kernel, strides, "VALID"),
                               rtol=1e-5, atol=1e-5)


def _algorithm(x_shape, features, strides=1, kernel_size=3, padding=SAME):
  kernel_shape = (kernel_size, kernel_size, x_shape[-1], features)
  chosen = convolution.cpu_algorithm(x_shape, kernel_shape, strides, padding)
  if chosen is None:
    return "convolution"
  return "winograd" if chosen is convolution.conv3x3_winograd else "im2col"


def test_the_cpu_algorithm_of_each_r50x1_layer_at_128_px_batch_8():
  assert _algorithm((8, 134, 134, 3), 64, 2, 7, "VALID") == "convolution"   # stem
  assert _algorithm((8, 32, 32, 64), 64) == "winograd"                     # block1
  assert _algorithm((8, 32, 32, 128), 128, strides=2) == "convolution"     # block2
  assert _algorithm((8, 16, 16, 128), 128) == "convolution"
  assert _algorithm((8, 16, 16, 256), 256, strides=2) == "im2col"          # block3
  assert _algorithm((8, 8, 8, 256), 256) == "im2col"
  assert _algorithm((8, 8, 8, 512), 512, strides=2) == "im2col"            # block4
  assert _algorithm((8, 4, 4, 512), 512) == "im2col"
  assert _algorithm((8, 33, 32, 64), 64) == "convolution"  # odd: no 2x2 tiles


def _lowered_ops(platform, x_shape, features):
  x = jnp.zeros(x_shape)
  kernel = jnp.zeros((3, 3, x_shape[-1], features))
  conv = jax.jit(lambda x, k: convolution.conv2d(x, k, 1, SAME))
  text = conv.trace(x, kernel).lower(lowering_platforms=(platform,)).as_text()
  return "convolution" in text, "dot_general" in text


@pytest.mark.parametrize("x_shape", [(8, 4, 4, 512), (8, 32, 32, 64)])
def test_only_cpu_replaces_the_convolution(x_shape):
  assert _lowered_ops("cpu", x_shape, x_shape[-1]) == (False, True)
  for accelerator in ("cuda", "rocm", "tpu"):
    assert _lowered_ops(accelerator, x_shape, x_shape[-1]) == (True, False), accelerator


def test_cpu_can_trace_what_accelerators_run():
  with convolution.xla_convolution_everywhere():
    assert _lowered_ops("cpu", (8, 32, 32, 64), 64) == (True, False)
  assert _lowered_ops("cpu", (8, 32, 32, 64), 64) == (False, True)


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_each_algorithm_runs_on_a_batch_sharded_over_8_devices(algorithm):
  # train.py's mesh has explicit axes: reshapes and products must keep the batch shardable.
  mesh = jax.make_mesh((8,), ("data",))
  x, kernel = _inputs((8, 8, 8, 16), (3, 3, 16, 16))
  fn = {"im2col": lambda x, k: convolution.conv2d_as_product(x, k, 2, SAME),
        "winograd": convolution.conv3x3_winograd}[algorithm]
  loss = lambda x, k: jnp.sum(jnp.square(fn(x, k)))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
  sharded = grads(jax.device_put(x, NamedSharding(mesh, P("data"))),
                  jax.device_put(kernel, NamedSharding(mesh, P())))
  for a, b in zip(sharded, grads(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))
