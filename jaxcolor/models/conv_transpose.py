"""Transposed convolution computed as `stride**2` ordinary convolutions.

`lax.conv_transpose` convolves a zero-dilated input. XLA's CPU backend runs
the weight gradient of such a dilated convolution many times slower than
an ordinary one (docs/benchmarks.md, "Transposed convolutions"). Every output
phase (o mod stride) of a transposed conv only meets every stride-th kernel
tap, so the same result is the interleaving of `stride**2` small VALID
convolutions over the undilated input: no multiply by an inserted zero, and
fast gradients.

`conv_transpose` computes `lax.conv_transpose` (HWIO kernel, no flip);
`conv_transpose_d2s` computes the same as one ordinary convolution with
`stride**2` times the output channels followed by a depth-to-space
shuffle. The module with flax.linen.ConvTranspose's parameters is
`jaxcolor.models.conv_impl.ConvTranspose` (its 'phase' and 'd2s' forms are
these two).
"""

import jax
from jax import lax
import jax.numpy as jnp


def transpose_padding(kernel: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """lax.conv_transpose padding giving out = stride * in.

  For k4 s2 this is (2, 2), i.e. PyTorch's ConvTranspose2d(4, 2, padding=1):
  lax pads the dilated input by k - 1 - p_torch on each side.
  """
  total = kernel + stride - 2
  before = kernel - 1 if stride > kernel - 1 else -(-total // 2)
  pad = (before, total - before)
  return (pad, pad)


def _phase(a: int, stride: int, kernel: int, pad_before: int):
  """Output phase a: first kernel tap, input offset, number of taps."""
  t0 = (pad_before - a) % stride
  offset = (a + t0 - pad_before) // stride
  return t0, offset, len(range(t0, kernel, stride))


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int,
                   padding: tuple[tuple[int, int], tuple[int, int]]
                   ) -> jax.Array:
  """Equals `lax.conv_transpose(x, kernel, (s, s), padding)` for NHWC/HWIO.

  Args:
    x: (B, H, W, C_in).
    kernel: (k, k, C_in, C_out).
    stride: s.
    padding: ((lo, hi), (lo, hi)) as lax.conv_transpose takes it, with
      lo + hi = k + s - 2 (output = s * input).
  Returns:
    (B, s*H, s*W, C_out).
  """
  k = kernel.shape[0]
  for lo, hi in padding:
    if lo + hi != k + stride - 2:
      raise ValueError(f'padding {padding} does not give output = {stride} x '
                       f'input for kernel {k}')
  b, h, w, _ = x.shape
  zero = jnp.zeros((), x.dtype)
  rows = []
  for a in range(stride):
    ta, oa, na = _phase(a, stride, k, padding[0][0])
    cols = []
    for c in range(stride):
      tc, oc, nc = _phase(c, stride, k, padding[1][0])
      xp = lax.pad(x, zero, ((0, 0, 0), (-oa, oa + na - 1, 0),
                             (-oc, oc + nc - 1, 0), (0, 0, 0)))
      cols.append(lax.conv_general_dilated(
          xp, kernel[ta::stride, tc::stride].astype(x.dtype), (1, 1), 'VALID',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    rows.append(jnp.stack(cols, axis=3))      # (B, H, W, s_col, C)
  y = jnp.stack(rows, axis=2)                 # (B, H, s_row, W, s_col, C)
  return y.reshape(b, h * stride, w * stride, kernel.shape[-1])


def conv_transpose_d2s(x: jax.Array, kernel: jax.Array, stride: int,
                       padding: tuple[tuple[int, int], tuple[int, int]]
                       ) -> jax.Array:
  """Equals `conv_transpose` as one convolution plus a depth-to-space.

  Every phase reads a window of n = k / s input pixels; the windows of the
  phases are the same window shifted by whole pixels. One stride-1 conv
  with an n x n window over the input padded to cover all shifts computes
  every phase's taps at once (s*s*C_out output channels, a wider matmul
  than `conv_transpose`'s s*s convs of C_out each); each phase then takes
  its shifted H x W slice. It computes (H + extra)^2 positions for H^2
  used ones (extra = 1 for k4 s2), so it suits larger inputs.

  Args and result as `conv_transpose`; needs k divisible by s (else it
  computes `conv_transpose`).
  """
  k = kernel.shape[0]
  b, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  rows = [_phase(a, stride, k, padding[0][0]) for a in range(stride)]
  cols = [_phase(a, stride, k, padding[1][0]) for a in range(stride)]
  n = rows[0][2]
  if any(p[2] != n for p in rows + cols):
    return conv_transpose(x, kernel, stride, padding)
  # Input offsets the phases read: [lo, hi + n - 1] around each pixel.
  r_lo, c_lo = min(p[1] for p in rows), min(p[1] for p in cols)
  r_hi = max(p[1] for p in rows) + n - 1
  c_hi = max(p[1] for p in cols) + n - 1
  zero = jnp.zeros((), x.dtype)
  xp = lax.pad(x, zero, ((0, 0, 0), (-r_lo, r_hi, 0), (-c_lo, c_hi, 0),
                         (0, 0, 0)))
  # (n, n, C_in, s_row, s_col, C_out): phase (a, c) takes taps ta::s, tc::s.
  taps = jnp.stack([jnp.stack([kernel[ta::stride, tc::stride]
                               for tc, _, _ in cols], axis=3)
                    for ta, _, _ in rows], axis=3)
  z = lax.conv_general_dilated(
      xp, taps.reshape(n, n, c_in, -1).astype(x.dtype), (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  z = z.reshape(b, z.shape[1], z.shape[2], stride, stride, c_out)
  y = jnp.stack([
      jnp.stack([z[:, oa - r_lo:oa - r_lo + h, oc - c_lo:oc - c_lo + w, a, c]
                 for c, (_, oc, _) in enumerate(cols)], axis=3)
      for a, (_, oa, _) in enumerate(rows)], axis=2)  # (B, H, s, W, s, C)
  return y.reshape(b, h * stride, w * stride, c_out)
