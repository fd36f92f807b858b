"""Convolution implementations selected by `config.model.conv_impl`."""

import functools
from typing import Any, Callable

from flax import linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxcolor.kernels import dnnl_conv
from jaxcolor.kernels import winograd
from jaxcolor.models import conv_transpose as conv_transpose_lib

DN = ('NHWC', 'HWIO', 'NHWC')


def _out_size(n, k, s, pad):
  return (n + pad[0] + pad[1] - k) // s + 1


def _pad(x, padding):
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0), (*padding[0], 0), (*padding[1], 0),
                           (0, 0, 0)))


def contract(a, b, contracting):
  """a . b over a's `contracting[0]` and b's `contracting[1]` axes, in the
  operands' dtype (XLA's choice of accumulation)."""
  return lax.dot_general(a, b, (contracting, ((), ())))


def matmul(a, b, contracting):
  """`contract` with a float32 result, whatever the operands' dtype.

  A matmul of bfloat16 operands with a float32 result is the one bfloat16
  contraction XLA's CPU backend (jaxlib 0.10) keeps in bfloat16, for
  YNNPACK's bfloat16 kernel; it computes every other bfloat16 matmul and
  convolution in float32 (docs/benchmarks.md). XLA's own dot kernel lacks
  this form: one YNNPACK does not take (e.g. both operands contracted over
  their leading axes with the larger one on the right) fails at run time
  ("Unsupported element type for DotThunk"), so tests/test_conv_impl.py
  and tests/test_resnet18.py pin each use to a YNNPACK fusion.
  """
  return lax.dot_general(a, b, (contracting, ((), ())),
                         preferred_element_type=jnp.float32)


def patches(x, k, s, padding):
  """(B,H,W,C) -> (B,Ho,Wo,k*k*C), taps ordered (row, col, channel)."""
  b, h, w, c = x.shape
  ho, wo = _out_size(h, k, s, padding[0]), _out_size(w, k, s, padding[1])
  xp = _pad(x, padding)
  cols = []
  for i in range(k):
    for j in range(k):
      cols.append(lax.slice(xp, (0, i, j, 0),
                            (b, i + (ho - 1) * s + 1, j + (wo - 1) * s + 1, c),
                            (1, s, s, 1)))
  return jnp.concatenate(cols, axis=-1)


def on_bits(build, x, *args):
  """`build(x, *args)`, an op that only moves elements, run on bfloat16's
  bits where `x` is bfloat16: XLA's CPU backend computes every bfloat16 op
  in float32 with converts around it, data movement included, and moves
  integers as they are. Not under jax.linear_transpose (a bitcast has no
  transpose), nor for what a matmul reads transposed: XLA's transposing
  copy of a bit view is slow."""
  if x.dtype != jnp.bfloat16:
    return build(x, *args)
  bits = build(lax.bitcast_convert_type(x, jnp.uint16), *args)
  return lax.bitcast_convert_type(bits, jnp.bfloat16)


def _tap_kernel(kernel):
  """(k,k,C_in,C_out) -> (C_in, k*k*C_out), columns ordered (t, u, c)."""
  return jnp.transpose(kernel, (2, 0, 1, 3)).reshape(kernel.shape[2], -1)


def conv_xla(x, kernel, s, padding):
  return lax.conv_general_dilated(x, kernel.astype(x.dtype), (s, s), padding,
                                  dimension_numbers=DN)


def conv_mm(x, kernel, s, padding, dot=contract, bits=False):
  """Conv as one matmul over patches; `dot` is `contract` or `matmul`;
  `bits` builds the patches with `on_bits` (not under linear_transpose)."""
  k = kernel.shape[0]
  p = on_bits(patches, x, k, s, padding) if bits else patches(
      x, k, s, padding)
  w = kernel.reshape(-1, kernel.shape[-1]).astype(x.dtype)
  return dot(p, w, ((3,), (0,))).astype(x.dtype)


def conv_s2d(x, kernel, s, padding):
  """Stride-s conv as a stride-1 conv over the space-to-depth input."""
  if s == 1:
    return conv_xla(x, kernel, s, padding)
  b, h, w, c = x.shape
  k, o = kernel.shape[0], kernel.shape[-1]
  ho, wo = _out_size(h, k, s, padding[0]), _out_size(w, k, s, padding[1])
  kq = -(-k // s)  # taps per phase
  kernel = jnp.pad(kernel, ((0, kq * s - k), (0, kq * s - k), (0, 0), (0, 0)))
  # Padded input with exactly (ho + kq - 1) * s rows/cols.
  hp, wp = (ho + kq - 1) * s, (wo + kq - 1) * s
  pad = ((padding[0][0], hp - h - padding[0][0]),
         (padding[1][0], wp - w - padding[1][0]))
  xp = _pad(x, pad)
  xs = xp.reshape(b, hp // s, s, wp // s, s, c).transpose(0, 1, 3, 2, 4, 5)
  xs = xs.reshape(b, hp // s, wp // s, s * s * c)
  ks = kernel.reshape(kq, s, kq, s, c, o).transpose(0, 2, 1, 3, 4, 5)
  ks = ks.reshape(kq, kq, s * s * c, o)
  return conv_xla(xs, ks, 1, ((0, 0), (0, 0)))


def _tap_sum(z, padding, ho, wo):
  """(B,H,W,k,k,C_out) per-tap products -> the stride-1 conv's
  (B,Ho,Wo,C_out): tap (t, u) of input pixel (i, j) lands on output pixel
  (i + lo - t, j + lo - u)."""
  b, h, w, k, _, c_out = z.shape
  z = _pad(z.reshape(b, h, w, k * k * c_out), padding)
  z = z.reshape(b, z.shape[1], z.shape[2], k, k, c_out)
  y = None
  for t in range(k):
    for u in range(k):
      part = z[:, t:t + ho, u:u + wo, t, u, :]
      y = part if y is None else y + part
  return y


def conv_tap(x, kernel, s, padding, dot=contract):
  """Stride-1 conv as one matmul to k*k*C_out channels and a shifted sum.

  y[i, j] = sum_{t,u} x[i + t - lo, j + u - lo] @ W[t, u]: the matmul gives
  every tap's product at every input pixel at once (C_in x k*k*C_out, a
  far better matmul than a conv with a handful of output channels); the
  taps are then added at their shifts (in `dot`'s result dtype). For few
  output channels.
  """
  if s != 1:
    raise ValueError('the tap form needs stride 1')
  k, c_out = kernel.shape[0], kernel.shape[3]
  b, h, w, _ = x.shape
  ho, wo = _out_size(h, k, 1, padding[0]), _out_size(w, k, 1, padding[1])
  z = dot(x, _tap_kernel(kernel).astype(x.dtype), ((3,), (0,)))
  return _tap_sum(z.reshape(b, h, w, k, k, c_out), padding, ho,
                  wo).astype(x.dtype)


FORMS = {'xla': conv_xla, 'mm': conv_mm, 's2d': conv_s2d, 'tap': conv_tap}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_mixed(x, kernel, s, padding, forms):
  return FORMS[forms[0]](x, kernel, s, padding)


def _mixed_fwd(x, kernel, s, padding, forms):
  return conv_mixed(x, kernel, s, padding, forms), (x, kernel)


def conv_dx(form, x, kernel, g, s, padding):
  return jax.linear_transpose(
      lambda x: FORMS[form](x, kernel, s, padding), x)(g)[0]


def conv_dw(form, x, kernel, g, s, padding):
  w = kernel.astype(x.dtype)
  return jax.linear_transpose(
      lambda w: FORMS[form](x, w, s, padding), w)(g)[0]


def _mixed_bwd(s, padding, forms, res, g):
  x, kernel = res
  gx = conv_dx(forms[1], x, kernel, g, s, padding)
  gw = conv_dw(forms[2], x, kernel, g, s, padding)
  return gx, gw.astype(kernel.dtype)


conv_mixed.defvjp(_mixed_fwd, _mixed_bwd)


def _overlap_add(z, s, padding, dtype):
  """(B,H,W,k,k,C_out) taps -> the transposed conv's (B,sH,sW,C_out)."""
  b, h, w, k, _, _ = z.shape
  ho, wo = s * h, s * w
  zero = jnp.zeros((), dtype)
  y = None
  for t in range(k):
    lo_r = padding[0][0] - t
    for u in range(k):
      lo_c = padding[1][0] - u
      part = lax.pad(z[:, :, :, t, u, :].astype(dtype), zero, (
          (0, 0, 0), (lo_r, ho - lo_r - (s * (h - 1) + 1), s - 1),
          (lo_c, wo - lo_c - (s * (w - 1) + 1), s - 1), (0, 0, 0)))
      y = part if y is None else y + part
  return y


def conv_transpose_scatter(x, kernel, s, padding, dot=contract):
  """lax.conv_transpose as one matmul and an overlap-add of k*k taps (in
  `dot`'s result dtype)."""
  b, h, w, _ = x.shape
  k, cout = kernel.shape[0], kernel.shape[-1]
  z = dot(x, _tap_kernel(kernel).astype(x.dtype), ((3,), (0,)))
  return _overlap_add(z.reshape(b, h, w, k, k, cout), s, padding,
                      z.dtype).astype(x.dtype)


def conv_transpose_xla(x, kernel, s, padding):
  return lax.conv_transpose(x, kernel.astype(x.dtype), (s, s), padding,
                            dimension_numbers=DN)


TFORMS = {'xla': conv_transpose_xla,
          'phase': conv_transpose_lib.conv_transpose,
          'd2s': conv_transpose_lib.conv_transpose_d2s,
          'mm': conv_transpose_scatter}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose_mixed(x, kernel, s, padding, forms):
  return TFORMS[forms[0]](x, kernel, s, padding)


def _tmixed_fwd(x, kernel, s, padding, forms):
  return conv_transpose_mixed(x, kernel, s, padding, forms), (x, kernel)


def _tpatches(g, k, s, padding, h, w):
  """Output-grad taps of a transposed conv: (B,H,W,k*k*C), order (t,u,c).

  Tap (t, u) of input pixel (i, j) is g[s*i + lo - t, s*j + lo - u].
  """
  b, ho, wo, c = g.shape
  pads, offs = [], []
  for lo, n, nout in ((padding[0][0], h, ho), (padding[1][0], w, wo)):
    before = max(0, k - 1 - lo)
    after = max(0, s * (n - 1) + lo - (nout - 1))
    pads.append((before, after))
    offs.append(before + lo)
  gp = _pad(g, pads)
  cols = []
  for t in range(k):
    for u in range(k):
      r0, c0 = offs[0] - t, offs[1] - u
      cols.append(lax.slice(gp, (0, r0, c0, 0),
                            (b, r0 + s * (h - 1) + 1, c0 + s * (w - 1) + 1, c),
                            (1, s, s, 1)))
  return jnp.concatenate(cols, axis=-1)


def _transpose_mm_grads(x, kernel, g, s, padding, dot):
  """(input grad, weight grad) of `conv_transpose_scatter`, both matmuls
  over one set of the output grad's taps."""
  k, cin, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
  gp = _tpatches(g, k, s, padding, x.shape[1], x.shape[2])
  # kernel (t,u,ci,co) -> (t,u,co,ci) -> (k*k*co, ci)
  wk = jnp.transpose(kernel, (0, 1, 3, 2)).reshape(-1, cin)
  gx = dot(gp, wk.astype(g.dtype), ((3,), (0,)))
  gw = dot(x, gp, ((0, 1, 2), (0, 1, 2)))
  return gx, jnp.transpose(gw.reshape(cin, k, k, cout), (1, 2, 0, 3))


def conv_transpose_dx(form, x, kernel, g, s, padding):
  if form == 'mm':
    return _transpose_mm_grads(x, kernel, g, s, padding, contract)[0]
  return jax.linear_transpose(
      lambda x: TFORMS[form](x, kernel, s, padding), x)(g)[0]


def conv_transpose_dw(form, x, kernel, g, s, padding):
  if form == 'mm':
    return _transpose_mm_grads(x, kernel, g, s, padding, contract)[1]
  w = kernel.astype(x.dtype)
  return jax.linear_transpose(
      lambda w: TFORMS[form](x, w, s, padding), w)(g)[0]


def _tmixed_bwd(s, padding, forms, res, g):
  x, kernel = res
  gx = conv_transpose_dx(forms[1], x, kernel, g, s, padding)
  gw = conv_transpose_dw(forms[2], x, kernel, g, s, padding)
  return gx, gw.astype(kernel.dtype)


conv_transpose_mixed.defvjp(_tmixed_fwd, _tmixed_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul(x, kernel, s, padding):
  """A convolution as one matmul over patches in all three passes.

  x (B,H,W,C) in the compute dtype, kernel (k,k,C,O) float32 -> (B,Ho,Wo,O)
  in x's dtype; products accumulate in float32 (`matmul`). Where nothing
  differentiates it (a frozen branch), the patches are built on the
  bfloat16 bits (`on_bits`); differentiated, in float32, as the weight
  grad's matmul needs them transposed, which XLA makes slow on the bits.
  """
  return conv_mm(x, kernel, s, padding, matmul, bits=True)


def _conv_matmul_fwd(x, kernel, s, padding):
  return conv_mm(x, kernel, s, padding, matmul), (x, kernel)


def _conv_matmul_bwd(s, padding, res, g):
  x, kernel = res
  k, o = kernel.shape[0], kernel.shape[-1]
  to_patches = lambda x: patches(x, k, s, padding)  # noqa: E731
  gw = matmul(to_patches(x), g, ((0, 1, 2), (0, 1, 2)))
  w = kernel.reshape(-1, o).astype(g.dtype)
  g_patches = matmul(g, w, ((3,), (1,)))  # (B,Ho,Wo,k*k*C) float32
  gx = jax.linear_transpose(
      to_patches, jax.ShapeDtypeStruct(x.shape, jnp.float32))(g_patches)[0]
  return gx.astype(x.dtype), gw.reshape(kernel.shape).astype(kernel.dtype)


conv_matmul.defvjp(_conv_matmul_fwd, _conv_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_tap_matmul(x, kernel, s, padding):
  """`conv_tap` (stride 1, few output channels) with its three passes as
  matmuls of `matmul`'s dtypes: the patches of an output with k*k*C_out
  columns would be a matrix-vector product, which YNNPACK does not take."""
  return conv_tap(x, kernel, s, padding, matmul)


def _conv_tap_matmul_fwd(x, kernel, s, padding):
  return conv_tap_matmul(x, kernel, s, padding), (x, kernel)


def _conv_tap_matmul_bwd(s, padding, res, g):
  x, kernel = res
  k, c_in, c_out = kernel.shape[0], kernel.shape[2], kernel.shape[3]
  b, h, w, _ = x.shape
  taps = jax.ShapeDtypeStruct((b, h, w, k, k, c_out), g.dtype)
  g_taps = jax.linear_transpose(
      lambda z: _tap_sum(z, padding, g.shape[1], g.shape[2]), taps)(g)[0]
  g_taps = g_taps.reshape(b, h, w, k * k * c_out)
  gx = matmul(g_taps, _tap_kernel(kernel).astype(g.dtype), ((3,), (1,)))
  gw = matmul(x, g_taps, ((0, 1, 2), (0, 1, 2)))
  gw = jnp.transpose(gw.reshape(c_in, k, k, c_out), (1, 2, 0, 3))
  return gx.astype(x.dtype), gw.astype(kernel.dtype)


conv_tap_matmul.defvjp(_conv_tap_matmul_fwd, _conv_tap_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose_matmul(x, kernel, s, padding):
  """A transposed convolution as one matmul in all three passes (forward:
  to every tap, then an overlap-add; grads: over the output grad's taps).
  Dtypes as `conv_matmul`."""
  return conv_transpose_scatter(x, kernel, s, padding, matmul)


def _conv_transpose_matmul_fwd(x, kernel, s, padding):
  return conv_transpose_matmul(x, kernel, s, padding), (x, kernel)


def _conv_transpose_matmul_bwd(s, padding, res, g):
  x, kernel = res
  gx, gw = _transpose_mm_grads(x, kernel, g, s, padding, matmul)
  return gx.astype(x.dtype), gw.astype(kernel.dtype)


conv_transpose_matmul.defvjp(_conv_transpose_matmul_fwd,
                             _conv_transpose_matmul_bwd)


# 'mm': every convolution and transposed convolution a matmul in all passes
# (conv_matmul, conv_tap_matmul, conv_transpose_matmul): in bfloat16, meant
# for CPUs with bfloat16 matrix units. 'dnnl': oneDNN's convolutions, as
# XLA custom calls (jaxcolor/kernels), on CPUs. 'winograd': 'dnnl', with
# the stride-1 3x3 and 4x4 convolutions where `winograd_pays` on the kernel
# library's Winograd convolutions instead.
IMPLS = ('fast', 'phase', 'xla', 'mm', 'dnnl', 'winograd')
# The forms that run on the kernel library (jaxcolor/kernels).
KERNEL_IMPLS = ('dnnl', 'winograd')
# Where Winograd's method beats oneDNN's direct convolution, by the compute
# dtype (per-layer timings on a Zen 4, docs/benchmarks.md): in float32 with
# 64 or more channels in and out; in bfloat16, whose direct convolution
# runs on the CPU's bfloat16 units while Winograd's matmuls stay float32,
# only for the widest layers (C_in x C_out of 256 x 512 or more).
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_BF16_PRODUCT = 256 * 512


def winograd_pays(kernel_shape, stride, dtype=jnp.float32) -> bool:
  """Whether conv_impl='winograd' computes a convolution with a kernel of
  `kernel_shape` (k, k, C_in, C_out), `stride` and activations of `dtype`
  by Winograd's method."""
  c_in, c_out = kernel_shape[2:]
  if not winograd.supports(kernel_shape[0], stride):
    return False
  if jnp.dtype(dtype) == jnp.bfloat16:
    return c_in * c_out >= WINOGRAD_MIN_BF16_PRODUCT
  return min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS


def conv_forms(x_shape, kernel_shape, stride, padding):
  """(forward, input-grad, weight-grad) forms for one conv on XLA CPU.

  Chosen from per-layer timings at batch 64 with XLA's Eigen convolutions
  (`config.xla_cpu_convolutions='eigen'`, benchmarks/conv_layers.py):
  XLA's conv handles most shapes well, but it is 10-100x slow where the
  output has only a few pixels (matmul over patches instead), 1.2-3x slow
  on input grads of strided convs (a stride-1 conv over the space-to-depth
  input, or patches where the output is small) and 2-5x slow where there
  are few output channels (the tap form's one wide matmul instead).
  """
  k, cout = kernel_shape[0], kernel_shape[-1]
  ho = _out_size(x_shape[1], k, stride, padding[0])
  wo = _out_size(x_shape[2], k, stride, padding[1])
  if ho * wo <= 4:
    return ('mm', 'mm', 'mm')
  if stride == 1:
    return ('tap', 'xla', 'tap') if cout <= 8 else ('xla', 'xla', 'xla')
  if ho * wo <= 16:
    return ('xla', 'mm', 'xla')
  return ('xla', 's2d', 'xla')


def conv_transpose_forms(x_shape):
  """(forward, input-grad, weight-grad) forms for one transposed conv."""
  hw = x_shape[1] * x_shape[2]
  if hw <= 4:
    return ('mm', 'mm', 'mm')
  if hw <= 16:
    return ('phase', 'mm', 'mm')
  if hw < 256:
    return ('phase', 'phase', 'mm')
  return ('d2s', 'd2s', 'd2s')


def conv(x, kernel, stride, padding, impl='fast'):
  """NHWC x HWIO convolution, square stride, explicit ((lo, hi), (lo, hi))."""
  padding = tuple(tuple(p) for p in padding)
  if impl == 'winograd' and winograd_pays(kernel.shape, stride, x.dtype):
    return winograd.conv(x, kernel, padding)
  if impl in KERNEL_IMPLS:
    return dnnl_conv.conv(x, kernel, stride, padding)
  if impl in ('xla', 'phase'):
    return conv_xla(x, kernel, stride, padding)
  if impl == 'mm':
    if stride == 1 and kernel.shape[-1] <= 8:  # as 'fast' picks the tap form
      return conv_tap_matmul(x, kernel, stride, padding)
    return conv_matmul(x, kernel, stride, padding)
  if impl == 'fast':
    impl = conv_forms(x.shape, kernel.shape, stride, padding)
  if isinstance(impl, tuple):
    return conv_mixed(x, kernel, stride, padding, impl)
  if impl in FORMS:
    return FORMS[impl](x, kernel, stride, padding)
  raise ValueError(f'conv_impl={impl!r}; expected one of {IMPLS}')


def conv_transpose(x, kernel, stride, padding, impl='fast'):
  """Equals lax.conv_transpose(x, kernel, (s, s), padding) in NHWC/HWIO."""
  padding = tuple(tuple(p) for p in padding)
  if impl in KERNEL_IMPLS:
    return dnnl_conv.conv_transpose(x, kernel, stride, padding)
  if impl == 'mm':
    return conv_transpose_matmul(x, kernel, stride, padding)
  if impl == 'fast':
    impl = conv_transpose_forms(x.shape)
  if isinstance(impl, tuple):
    return conv_transpose_mixed(x, kernel, stride, padding, impl)
  if impl in TFORMS:
    return TFORMS[impl](x, kernel, stride, padding)
  raise ValueError(f'conv_impl={impl!r}; expected one of {IMPLS}')


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y (..., C) in the compute dtype + bias (C,) float32 cast to y's dtype.

  Its bias grad is the float32 sum of y's grad over all but the last axis.
  JAX's own is a sum in y's dtype: in bfloat16, XLA's CPU backend computes
  it as a float32 copy of the grad reduced by reduce_window, far slower
  than a float32 sum (docs/benchmarks.md), and rounds it to bfloat16.
  """
  return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
  return add_bias(y, bias), None


def _add_bias_bwd(_, g):
  return g, jnp.sum(g.astype(jnp.float32), axis=tuple(range(g.ndim - 1)))


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Module):
  """`nn.Conv` (square kernel and stride, explicit padding) with `impl`.

  Same parameters as `flax.linen.Conv`: kernel (k, k, C_in, C_out), bias.
  """
  features: int
  kernel_size: int
  stride: int
  padding: Any
  impl: str = 'fast'
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    y = conv(x.astype(self.dtype), kernel, self.stride, self.padding,
             self.impl)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
      y = add_bias(y, bias)
    return y


class ConvTranspose(nn.Module):
  """`nn.ConvTranspose` (square kernel and stride, explicit lax padding).

  Same parameters as `flax.linen.ConvTranspose`: kernel (k, k, C_in, C_out),
  bias; no kernel flip.
  """
  features: int
  kernel_size: int
  stride: int
  padding: Any
  impl: str = 'fast'
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    y = conv_transpose(x.astype(self.dtype), kernel, self.stride,
                       self.padding, self.impl)
    return add_bias(y, bias)
