"""Independent pure-numpy reference forward pass for BiT ResNet-v2.

Used only by tests. Reads the OFFICIAL BiT .npz key layout directly
(``resnet/root_block/standardized_conv2d/kernel``, ``resnet/blockB/unitNN/...``,
``resnet/group_norm/...``, ``resnet/head/conv2d/...``) and infers the
architecture (number of blocks, units per block, widths) from the keys.

Deliberately simple: numpy only, float64 internally, no flax / bit_jax imports.
Images are NHWC, kernels are HWIO.
"""
import re

import numpy as np

PREFIX = "resnet/"
CONV = "standardized_conv2d/kernel"


def _f64(a):
  return np.asarray(a, dtype=np.float64)


def relu(x):
  return np.maximum(x, 0.0)


def standardize(kernel, eps=1e-10):
  """Weight standardization of an HWIO kernel, per output channel.

  Mean and (biased) variance over (H, W, in); w = (w - mean) / sqrt(var + eps).
  """
  w = _f64(kernel)
  mean = w.mean(axis=(0, 1, 2), keepdims=True)
  var = ((w - mean) ** 2).mean(axis=(0, 1, 2), keepdims=True)
  return (w - mean) / np.sqrt(var + eps)


def conv2d(x, kernel, stride=1, padding=((0, 0), (0, 0))):
  """2-D convolution (cross-correlation), NHWC input, HWIO kernel, no bias.

  The input is zero-padded by ``padding = ((top, bottom), (left, right))``
  and then a VALID convolution with the given stride is applied.
  """
  x = _f64(x)
  k = _f64(kernel)
  (pt, pb), (pl, pr) = padding
  x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, h, w, cin = x.shape
  kh, kw, kcin, cout = k.shape
  assert kcin == cin, (kcin, cin)
  oh = (h - kh) // stride + 1
  ow = (w - kw) // stride + 1
  out = np.zeros((n, oh, ow, cout), dtype=np.float64)
  for i in range(kh):
    for j in range(kw):
      # Input pixels hit by kernel tap (i, j) for every output position.
      patch = x[:, i:i + stride * (oh - 1) + 1:stride,
                j:j + stride * (ow - 1) + 1:stride, :]
      out += np.einsum("nhwc,cd->nhwd", patch, k[i, j])
  return out


def group_norm(x, gamma, beta, groups=32, eps=1e-5):
  """GroupNorm over NHWC: stats over (H, W, channels-in-group), biased var."""
  x = _f64(x)
  n, h, w, c = x.shape
  assert c % groups == 0, (c, groups)
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  g = (g - mean) / np.sqrt(var + eps)
  return g.reshape(n, h, w, c) * _f64(gamma) + _f64(beta)


def max_pool_3x3_s2_zero_padded(x):
  """Zero-pad H and W by 1 (pad value 0, not -inf), then 3x3/2 VALID max."""
  x = np.pad(_f64(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  n, h, w, c = x.shape
  oh = (h - 3) // 2 + 1
  ow = (w - 3) // 2 + 1
  out = np.full((n, oh, ow, c), -np.inf)
  for i in range(3):
    for j in range(3):
      out = np.maximum(
          out, x[:, i:i + 2 * (oh - 1) + 1:2, j:j + 2 * (ow - 1) + 1:2, :])
  return out


def root_block(weights, x):
  """Pad 3, 7x7/2 standardized conv, then zero-padded 3x3/2 max-pool."""
  k = standardize(weights[PREFIX + "root_block/" + CONV])
  x = conv2d(x, k, stride=2, padding=((3, 3), (3, 3)))
  return max_pool_3x3_s2_zero_padded(x)


def unit(weights, prefix, x, stride):
  """One pre-activation bottleneck unit.

  ``prefix`` is e.g. ``"resnet/block2/unit01/"`` (trailing slash optional).
  """
  if not prefix.endswith("/"):
    prefix += "/"
  w = lambda name: weights[prefix + name]
  x = _f64(x)

  h = relu(group_norm(x, w("a/group_norm/gamma"), w("a/group_norm/beta")))
  proj_key = prefix + "a/proj/" + CONV
  if proj_key in weights:
    shortcut = conv2d(h, standardize(weights[proj_key]), stride=stride)
  else:
    assert stride == 1, "stride != 1 needs a projection shortcut"
    shortcut = x

  y = conv2d(h, standardize(w("a/" + CONV)))
  y = relu(group_norm(y, w("b/group_norm/gamma"), w("b/group_norm/beta")))
  y = conv2d(y, standardize(w("b/" + CONV)), stride=stride,
             padding=((1, 1), (1, 1)))
  y = relu(group_norm(y, w("c/group_norm/gamma"), w("c/group_norm/beta")))
  y = conv2d(y, standardize(w("c/" + CONV)))
  return y + shortcut


def infer_architecture(weights):
  """Infers the architecture from the official key names and shapes.

  Returns a dict with:
    ``root_width``: output channels of the root conv,
    ``blocks``: list of (block_name, [unit_names], width, stride), where width
      is the bottleneck width (output channels of conv a; unit outputs 4x).
    ``num_classes``: head output size.
  """
  unit_re = re.compile(r"^resnet/(block(\d+))/(unit(\d+))/")
  found = {}
  for key in weights:
    m = unit_re.match(key)
    if m:
      found.setdefault((int(m.group(2)), m.group(1)), set()).add(
          (int(m.group(4)), m.group(3)))
  blocks = []
  for idx, (bnum, bname) in enumerate(sorted(found)):
    assert bnum == idx + 1, f"blocks not contiguous: {sorted(found)}"
    units = sorted(found[(bnum, bname)])
    assert [u[0] for u in units] == list(range(1, len(units) + 1)), units
    unit_names = [u[1] for u in units]
    width = np.shape(
        weights[f"{PREFIX}{bname}/{unit_names[0]}/a/{CONV}"])[-1]
    blocks.append((bname, unit_names, int(width), 1 if bnum == 1 else 2))
  return {
      "root_width": int(np.shape(weights[PREFIX + "root_block/" + CONV])[-1]),
      "blocks": blocks,
      "num_classes": int(np.shape(weights[PREFIX + "head/conv2d/bias"])[0]),
  }


def forward(weights, images):
  """Full BiT ResNet-v2 forward. Returns ``(logits, pre_logits)``.

  images: NHWC float in [-1, 1]. pre_logits: (N, C) mean-pooled features
  after the final GroupNorm + ReLU. logits: pre_logits @ head kernel + bias.
  """
  arch = infer_architecture(weights)
  x = root_block(weights, _f64(images))
  for bname, unit_names, _, stride in arch["blocks"]:
    for i, uname in enumerate(unit_names):
      x = unit(weights, f"{PREFIX}{bname}/{uname}/", x,
               stride if i == 0 else 1)
  x = relu(group_norm(x, weights[PREFIX + "group_norm/gamma"],
                      weights[PREFIX + "group_norm/beta"]))
  pre_logits = x.mean(axis=(1, 2))
  head_k = _f64(weights[PREFIX + "head/conv2d/kernel"])
  head_k = head_k.reshape(head_k.shape[-2], head_k.shape[-1])
  logits = pre_logits @ head_k + _f64(weights[PREFIX + "head/conv2d/bias"])
  return logits, pre_logits
