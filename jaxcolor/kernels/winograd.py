"""Winograd convolutions on the CPU (stride 1, 3x3 and 4x4 kernels).

A convolution's output is cut into m x m tiles; per point of an n x n
transform (n = m + r - 1) one matmul over channels replaces the r x r taps'
products: for a 4x4 kernel with 3x3 tiles, 36 matmuls do the work of 144
taps per tile, a quarter of the multiplications (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016). winograd.cc runs the
transforms and oneDNN's matmuls on XLA's threads; `conv` gives them JAX's
semantics and gradients (a custom VJP: the input grad is the same kind of
convolution of dy, the weight grad is summed in the transformed space).

Values differ from a direct convolution's by rounding alone, a little more
of it: the transforms add and scale. `transform(m, r)` builds the
matrices exactly (fractions) from interpolation points chosen to keep
their entries small (0, ±1, 1/2, -2); tests/test_winograd.py bounds
the error against XLA's convolution in both dtypes.

Shapes as in dnnl_conv: activations NHWC, kernels HWIO (r, r, C, O)
float32; results in x's dtype (float32 or bfloat16), weight grads float32.
"""

import fractions
import functools

import jax
import numpy as np

from jaxcolor.kernels import library

# Interpolation points: a transform of n points takes the first n - 1 and
# the point at infinity.
POINTS = (0, 1, -1, fractions.Fraction(1, 2), -2, 2, fractions.Fraction(-1, 2))
# Kernel size -> output tile side m: n = m + r - 1 = 6 for 3x3 and 4x4
# kernels, the largest transform whose error stays near a direct
# convolution's in float32 (tests/test_winograd.py).
TILE = {3: 4, 4: 3}
# About how much scratch a call's transformed tiles take: a call goes
# through its tiles in chunks of this size (a few at 64 px, many at 256).
CHUNK_BYTES = 64 << 20


def supports(kernel_size: int, stride: int) -> bool:
  """Whether `conv` takes a convolution of this kernel size and stride."""
  return stride == 1 and kernel_size in TILE


def _inverse(rows):
  """The inverse of a square matrix of Fractions (Gauss-Jordan)."""
  n = len(rows)
  a = [list(row) + [fractions.Fraction(int(i == j)) for j in range(n)]
       for i, row in enumerate(rows)]
  for col in range(n):
    pivot = next(r for r in range(col, n) if a[r][col] != 0)
    a[col], a[pivot] = a[pivot], a[col]
    p = a[col][col]
    a[col] = [v / p for v in a[col]]
    for r in range(n):
      if r != col and a[r][col] != 0:
        f = a[r][col]
        a[r] = [x - f * y for x, y in zip(a[r], a[col])]
  return [row[n:] for row in a]


@functools.cache
def transform(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(A^T (m, n), G (n, r), B^T (n, n)) float32 of F(m, r) for correlation:
  y = A^T [(G g) * (B^T d)] for a kernel g of r taps and n inputs d."""
  n = m + r - 1
  points = [fractions.Fraction(p) for p in POINTS[:n - 1]]

  def evaluate(degree):  # a polynomial of `degree` coefficients at points
    rows = [[p ** j for j in range(degree)] for p in points]
    infinity = [fractions.Fraction(0)] * degree  # its leading coefficient
    infinity[-1] = fractions.Fraction(1)
    return rows + [infinity]

  v_inv = _inverse(evaluate(n))
  at = [list(col) for col in zip(*evaluate(m))]  # E_m^T
  bt = [list(col) for col in zip(*v_inv)]  # V^-T
  as_array = lambda rows: np.array([[float(v) for v in row] for row in rows],
                                   np.float32)
  return as_array(at), as_array(evaluate(r)), as_array(bt)


def _require() -> None:
  why = library.why_unavailable()
  if why:
    raise library.Unavailable(f'Winograd convolutions: {why}')


def _call(target, shape, dtype, a, b, r, padding, flip, chunk_bytes):
  _require()
  (top, bottom), (left, right) = padding
  at, g, bt = transform(TILE[r], r)
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, dtype))(
      a, b, at=at.ravel(), g=g.ravel(), bt=bt.ravel(), pad_top=np.int64(top),
      pad_bottom=np.int64(bottom), pad_left=np.int64(left),
      pad_right=np.int64(right), flip=np.int64(flip),
      chunk_bytes=np.int64(chunk_bytes))


def conv_fwd(x, w, padding, dtype, flip=False, chunk_bytes=CHUNK_BYTES):
  """(B,H,W,C) x float32 (r,r,C,O) -> (B,Ho,Wo,O) in `dtype`; with `flip`
  the kernel is (r,r,O,C), the transposed convolution's (see winograd.cc)."""
  r = w.shape[0]
  shape = (x.shape[0], x.shape[1] + sum(padding[0]) - r + 1,
           x.shape[2] + sum(padding[1]) - r + 1,
           w.shape[2] if flip else w.shape[3])
  return _call('jaxcolor_winograd_fwd', shape, dtype, x, w, r, padding,
               flip, chunk_bytes)


def conv_bwd_weights(x, dy, padding, w_shape, chunk_bytes=CHUNK_BYTES):
  """The float32 weight grad (w_shape) of `conv_fwd` from x and dy."""
  return _call('jaxcolor_winograd_bwd_weights', w_shape, np.float32, x, dy,
               w_shape[0], padding, False, chunk_bytes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, kernel, padding):
  """Equals lax.conv_general_dilated(x, kernel, (1, 1), padding) (NHWC,
  HWIO, explicit ((lo, hi), (lo, hi)) padding) up to rounding, in x's
  dtype; `kernel` float32 of a size `supports`."""
  return conv_fwd(x, kernel, padding, x.dtype)


def _conv_fwd(x, kernel, padding):
  return conv(x, kernel, padding), (x, kernel)


def _conv_bwd(padding, res, g):
  x, kernel = res
  g = g.astype(x.dtype)
  r = kernel.shape[0]
  grad_padding = tuple((r - 1 - lo, r - 1 - hi) for lo, hi in padding)
  gx = conv_fwd(g, kernel, grad_padding, x.dtype, flip=True)
  gw = conv_bwd_weights(x, g, padding, kernel.shape)
  return gx, gw.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)
