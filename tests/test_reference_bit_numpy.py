"""Self-tests for the independent numpy BiT reference (tests/reference_bit_numpy.py)."""
import numpy as np
import pytest

from tests import reference_bit_numpy as ref
from tests.official_layout import make_official_weights


def _naive_conv(x, k, stride, padding):
  (pt, pb), (pl, pr) = padding
  x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, h, w, cin = x.shape
  kh, kw, _, cout = k.shape
  oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
  out = np.zeros((n, oh, ow, cout))
  for b in range(n):
    for oy in range(oh):
      for ox in range(ow):
        for co in range(cout):
          s = 0.0
          for i in range(kh):
            for j in range(kw):
              for ci in range(cin):
                s += x[b, oy * stride + i, ox * stride + j, ci] * k[i, j, ci, co]
          out[b, oy, ox, co] = s
  return out


@pytest.mark.parametrize("ksize,stride,padding,size", [
    (3, 1, ((1, 1), (1, 1)), 5),
    (3, 2, ((1, 1), (1, 1)), 6),
    (7, 2, ((3, 3), (3, 3)), 9),
    (1, 2, ((0, 0), (0, 0)), 5),
    (3, 2, ((0, 1), (1, 0)), 7),
])
def test_conv2d_matches_naive(ksize, stride, padding, size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size + 1, 3))
  k = rng.normal(size=(ksize, ksize, 3, 4))
  got = ref.conv2d(x, k, stride, padding)
  want = _naive_conv(x, k, stride, padding)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv1x1_stride2_takes_even_pixels():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 6, 6, 2))
  k = rng.normal(size=(1, 1, 2, 3))
  got = ref.conv2d(x, k, 2)
  np.testing.assert_allclose(got, x[:, ::2, ::2, :] @ k[0, 0], atol=1e-12)


def test_group_norm_constant_groups_gives_beta():
  c, groups = 64, 32
  # Every group (2 channels) is constant over H, W and its channels.
  vals = np.repeat(np.arange(groups, dtype=np.float64) * 3.0 - 7.0, c // groups)
  x = np.broadcast_to(vals, (2, 3, 4, c)).copy()
  gamma = np.linspace(0.5, 2.0, c)
  beta = np.linspace(-1.0, 1.0, c)
  out = ref.group_norm(x, gamma, beta)
  np.testing.assert_allclose(out, np.broadcast_to(beta, out.shape), atol=1e-12)


def test_group_norm_hand_computed():
  # 1 group of 2 channels, 1x2 spatial: values [[0, 2], [4, 6]] -> mean 3, var 5.
  x = np.array([[[[0.0, 2.0], [4.0, 6.0]]]])
  out = ref.group_norm(x, np.array([1.0, 2.0]), np.array([0.0, 1.0]),
                       groups=1, eps=0.0)
  z = (np.array([[0.0, 2.0], [4.0, 6.0]]) - 3.0) / np.sqrt(5.0)
  want = z * np.array([1.0, 2.0]) + np.array([0.0, 1.0])
  np.testing.assert_allclose(out[0, 0], want, atol=1e-12)
  # Groups are normalised independently (per sample too).
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 4, 5, 64)) * 5 + 2
  out = ref.group_norm(x, np.ones(64), np.zeros(64))
  g = out.reshape(3, 4, 5, 32, 2)
  np.testing.assert_allclose(g.mean(axis=(1, 2, 4)), 0.0, atol=1e-10)
  np.testing.assert_allclose(g.var(axis=(1, 2, 4)), 1.0, atol=1e-5)


def test_standardize_zero_mean_unit_var():
  rng = np.random.default_rng(3)
  k = rng.normal(size=(3, 3, 5, 7)) * 4 + 1.5
  s = ref.standardize(k)
  np.testing.assert_allclose(s.mean(axis=(0, 1, 2)), 0.0, atol=1e-12)
  np.testing.assert_allclose(s.var(axis=(0, 1, 2)), 1.0, atol=1e-8)
  # Per-output-channel: scaling one output channel leaves the result unchanged.
  k2 = k.copy()
  k2[..., 3] *= 10.0
  np.testing.assert_allclose(ref.standardize(k2), s, atol=1e-12)


def test_max_pool_zero_padding():
  x = -1.0 - np.arange(2 * 8 * 8 * 3, dtype=np.float64).reshape(2, 8, 8, 3)
  out = ref.max_pool_3x3_s2_zero_padded(x)
  assert out.shape == (2, 4, 4, 3)
  # Windows touching the top/left zero padding see a 0 max.
  np.testing.assert_array_equal(out[:, 0, :, :], 0.0)
  np.testing.assert_array_equal(out[:, :, 0, :], 0.0)
  # Interior windows (no padding) are the true max of negative values.
  assert np.all(out[:, 1:, 1:, :] < 0)
  np.testing.assert_array_equal(out[:, 1:, 1:, :], x[:, 1:-1:2, 1:-1:2, :])
  # Positive input: ordinary max pooling.
  y = np.random.default_rng(4).normal(size=(1, 5, 5, 1))
  out = ref.max_pool_3x3_s2_zero_padded(y)
  yp = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
  assert out.shape == (1, 3, 3, 1)
  for i in range(3):
    for j in range(3):
      assert out[0, i, j, 0] == yp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, 0].max()


def test_infer_architecture():
  w = make_official_weights(widths=(32, 64, 32, 64), units=(2, 1, 3, 1),
                            num_classes=7)
  arch = ref.infer_architecture(w)
  assert arch["root_width"] == 32
  assert arch["num_classes"] == 7
  assert [(b, len(u), wd, s) for b, u, wd, s in arch["blocks"]] == [
      ("block1", 2, 32, 1), ("block2", 1, 64, 2),
      ("block3", 3, 32, 2), ("block4", 1, 64, 2)]
  assert arch["blocks"][2][1] == ["unit01", "unit02", "unit03"]


SMALL_WIDTHS = (32, 32, 64, 64)


def test_forward_shapes_and_determinism():
  w = make_official_weights(widths=SMALL_WIDTHS, units=(2, 1, 1, 1))
  x = np.random.default_rng(5).uniform(-1, 1, size=(2, 32, 32, 3)).astype(
      np.float32)
  logits, pre = ref.forward(w, x)
  assert logits.shape == (2, 10) and pre.shape == (2, 256)
  assert logits.dtype == np.float64
  assert np.all(np.isfinite(logits)) and np.all(pre >= 0)
  logits2, pre2 = ref.forward(w, x.copy())
  np.testing.assert_array_equal(logits, logits2)
  np.testing.assert_array_equal(pre, pre2)
  # Head is exactly a dense layer on pre_logits.
  k = w["resnet/head/conv2d/kernel"][0, 0].astype(np.float64)
  np.testing.assert_allclose(
      logits, pre @ k + w["resnet/head/conv2d/bias"], rtol=1e-12)
  # Different images give different outputs; batch elements are independent.
  l0, _ = ref.forward(w, x[:1])
  np.testing.assert_allclose(l0, logits[:1], rtol=1e-10, atol=1e-12)
  assert not np.allclose(logits[0], logits[1])


def test_forward_spatial_shapes_piecewise():
  w = make_official_weights(widths=SMALL_WIDTHS)
  x = np.zeros((1, 32, 32, 3))
  h = ref.root_block(w, x)
  assert h.shape == (1, 8, 8, 32)
  h = ref.unit(w, "resnet/block1/unit01", h, 1)
  assert h.shape == (1, 8, 8, 128)
  h = ref.unit(w, "resnet/block2/unit01/", h, 2)
  assert h.shape == (1, 4, 4, 128)
  h = ref.unit(w, "resnet/block3/unit01/", h, 2)
  assert h.shape == (1, 2, 2, 256)
  h = ref.unit(w, "resnet/block4/unit01/", h, 2)
  assert h.shape == (1, 1, 1, 256)


def test_unit_identity_shortcut():
  # A unit with no proj kernel adds its input unchanged: zero conv_c -> identity.
  w = make_official_weights(widths=SMALL_WIDTHS, units=(2, 1, 1, 1))
  w["resnet/block1/unit02/c/standardized_conv2d/kernel"] = np.zeros(
      (1, 1, 32, 128))
  # standardize(zeros) is 0/sqrt(1e-10) = 0, so the residual branch is zero.
  x = np.random.default_rng(6).normal(size=(1, 8, 8, 128))
  np.testing.assert_allclose(ref.unit(w, "resnet/block1/unit02/", x, 1), x,
                             atol=1e-12)
