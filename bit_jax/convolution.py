"""How BiT's convolutions are computed: one function, the algorithm chosen per shape.

`conv2d` is an NHWC x HWIO cross-correlation. 1x1 convolutions are matrix products on
every backend. On CPU, two shapes of k x k convolution also take another algorithm, since
XLA:CPU's convolutions run them at a fraction of its matrix-product rate (measurements in
benchmarks/RESULTS.md, R50x1 at 128 px, batch 8, 2-core development CPU):

- im2col: one product of the input's patches with the kernel, for outputs with few
  positions per output channel (BiT's block4, block3's strided conv). XLA:CPU reverses and
  transposes the kernel for the input gradient and transposes the kernel gradient, which
  costs more than the patches when the kernel outweighs the activations.
- Winograd F(2x2, 3x3) (Lavin & Gray 2016): 16 products over 4x4 input tiles, 2.25x fewer
  multiplications, for stride-1 3x3 convolutions over many tiles (block1).

Accelerators keep XLA's convolution (`jax.lax.platform_dependent`); every path computes the
same cross-correlation to float32 rounding, which tests/test_convolution.py checks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

# im2col pays off up to this many patch rows (batch x output positions) per output channel:
# R50x1 forward + backward, block4 17 -> 9 ms per unit, block3's strided conv 9.0 -> 7.8;
# block1-2 (16 or more rows per channel) lose.
IM2COL_MAX_ROWS_PER_FEATURE = 2
# Winograd pays off from this many 2x2 output tiles (batch x positions / 4): block1 (2,048
# tiles of 64 channels) 6.5 -> 3.7 ms forward, 12.7 -> 9.4 forward + backward; block2
# (512 tiles) loses, its products being too small.
WINOGRAD_MIN_TILES = 2048
_cpu_algorithms = True  # See `xla_convolution_everywhere`.


def conv2d(x: jax.Array, kernel: jax.Array, strides: int, padding: Any) -> jax.Array:
  """NHWC x HWIO cross-correlation; `padding` is "VALID" or ((top, bottom), (left, right))."""
  if kernel.shape[:2] == (1, 1) and padding == "VALID":
    return conv2d_as_product(x, kernel, strides, padding)  # One patch: the pixel itself.
  convolve = lambda x, kernel: xla_conv2d(x, kernel, strides, padding)
  on_cpu = _cpu_algorithms and cpu_algorithm(x.shape, kernel.shape, strides, padding)
  if not on_cpu:
    return convolve(x, kernel)
  return jax.lax.platform_dependent(x, kernel, cpu=on_cpu, default=convolve)


@contextlib.contextmanager
def xla_convolution_everywhere() -> Iterator[None]:
  """Within it, `conv2d` traces to XLA's convolution on CPU too: what an accelerator runs,
  for compiling an accelerator's program with the CPU compiler (benchmarks/memory.py)."""
  global _cpu_algorithms
  previous, _cpu_algorithms = _cpu_algorithms, False
  try:
    yield
  finally:
    _cpu_algorithms = previous


def cpu_algorithm(x_shape, kernel_shape, strides: int, padding: Any
                  ) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
  """The algorithm XLA:CPU runs faster than its convolution for these shapes, or None."""
  out_h, out_w = _output_hw(x_shape, kernel_shape[0], strides, padding)
  if x_shape[0] * out_h * out_w <= IM2COL_MAX_ROWS_PER_FEATURE * kernel_shape[-1]:
    return lambda x, kernel: conv2d_as_product(x, kernel, strides, padding)
  if (kernel_shape[:2] == (3, 3) and strides == 1 and padding == ((1, 1), (1, 1))
      and x_shape[1] % 2 == 0 and x_shape[2] % 2 == 0
      and x_shape[0] * out_h * out_w // 4 >= WINOGRAD_MIN_TILES):
    return conv3x3_winograd
  return None


def xla_conv2d(x: jax.Array, kernel: jax.Array, strides: int, padding: Any) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (strides, strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _output_hw(x_shape, kernel_size: int, strides: int, padding: Any) -> tuple[int, int]:
  pads = ((0, 0), (0, 0)) if padding == "VALID" else padding
  return tuple((size + sum(pad) - kernel_size) // strides + 1
               for size, pad in zip(x_shape[1:3], pads))


def conv2d_as_product(x: jax.Array, kernel: jax.Array, strides: int, padding: Any
                      ) -> jax.Array:
  """`conv2d` as one matrix product of the input's patches (im2col) with the kernel.

  The patches' channels run (kernel row, kernel column, input channel), the order of an
  HWIO kernel's first three axes, so the kernel is used as a (k*k*in, out) view.
  """
  k = kernel.shape[0]
  if padding != "VALID":
    x = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  n = x.shape[0]
  out_h, out_w = _output_hw(x.shape, k, strides, "VALID")
  patches = jnp.concatenate(
      [x[:, i:i + strides * (out_h - 1) + 1:strides, j:j + strides * (out_w - 1) + 1:strides]
       for i in range(k) for j in range(k)], axis=-1)
  product = patches.reshape(n * out_h * out_w, -1) @ kernel.reshape(-1, kernel.shape[-1])
  return product.reshape(n, out_h, out_w, kernel.shape[-1])


# F(2x2, 3x3): input tile transform B^T, kernel transform G, output transform A^T.
_B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def conv3x3_winograd(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`conv2d(x, kernel, 1, ((1, 1), (1, 1)))` of a 3x3 kernel by Winograd F(2x2, 3x3).

  Each 2x2 block of output pixels is A^T [(G g G^T) . (B^T d B)] A, where d is the 4x4
  input tile around it: the elementwise product over the 16 tile positions is, summed over
  input channels, 16 matrix products of (tiles, in) with (in, out). H and W must be even.
  """
  n, h, w, channels = x.shape
  tiles_h, tiles_w = h // 2, w // 2
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # pixel[i][j]: pixel (i, j) of every 4x4 tile (tiles overlap by 2), (N, h/2, w/2, in).
  pixel = [[x[:, i:i + h - 1:2, j:j + w - 1:2] for j in range(4)] for i in range(4)]
  kernel_t = jnp.einsum("ai,ijco,bj->abco", _G, kernel, _G).astype(x.dtype)
  # One (tiles, in) x (in, out) product per tile position (faster on XLA:CPU than one
  # batched product); rows are (batch, tile) with the batch major, as a sharded batch needs.
  rows = n * tiles_h * tiles_w
  planes = [[(_bilinear(_B_T, a, b, pixel).reshape(rows, channels) @ kernel_t[a, b]
              ).reshape(n, tiles_h, tiles_w, -1) for b in range(4)] for a in range(4)]
  out = jnp.stack([jnp.stack([_bilinear(_A_T, p, q, planes) for q in range(2)], axis=3)
                   for p in range(2)], axis=2)                 # (N, h/2, 2, w/2, 2, out)
  # One pair of axes merged at a time: what a reshape of sharded arrays allows.
  return out.reshape(n, h, tiles_w, 2, -1).reshape(n, h, w, -1)


def _bilinear(t: np.ndarray, a: int, b: int, planes) -> jax.Array:
  """sum over i, j of t[a, i] * t[b, j] * planes[i][j], skipping the zero coefficients."""
  terms = [(float(t[a, i] * t[b, j]), planes[i][j])
           for i in range(t.shape[1]) for j in range(t.shape[1]) if t[a, i] * t[b, j]]
  total = None
  for coefficient, plane in terms:
    term = plane if coefficient == 1 else -plane if coefficient == -1 else coefficient * plane
    total = term if total is None else total + term
  return total
