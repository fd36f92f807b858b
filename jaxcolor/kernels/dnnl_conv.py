"""oneDNN convolutions on the CPU: `config.model.conv_impl='dnnl'`.

XLA's CPU backend (jaxlib 0.10) computes a bfloat16 convolution in float32
on Eigen; oneDNN runs it on the CPU's bfloat16 units (AVX512-BF16, AMX), as
PyTorch does. dnnl_conv.cc wraps oneDNN's three convolution passes as XLA
FFI custom calls; `conv` and `conv_transpose` give them JAX's semantics and
gradients (custom VJPs). They are in the kernel library
(jaxcolor/kernels/library.py); `library.load()` says why it is missing.

Shapes: activations NHWC, kernels HWIO (k, k, C_in, C_out) float32; a
call's result has x's dtype (float32 or bfloat16), products accumulate in
float32 inside oneDNN, and weight grads are float32. Under shard_map the
results carry no varying-axes type: steps compile with check_vma=False
(runtime/parallel.py), as the trainer's do.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcolor.kernels import library


def _require() -> None:
  why = library.why_unavailable()
  if why:
    raise library.Unavailable(f"config.model.conv_impl='dnnl': {why}")


def _call(target, shape, dtype, a, b, s, padding, flip):
  (top, bottom), (left, right) = padding
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, dtype))(
      a, b, stride=np.int64(s), pad_top=np.int64(top),
      pad_bottom=np.int64(bottom), pad_left=np.int64(left),
      pad_right=np.int64(right), flip=np.int64(flip))


def _out_size(n, k, s, pad):
  return (n + pad[0] + pad[1] - k) // s + 1


# `flip`: the kernel given is lax.conv_transpose's (k,k,O,C), of the
# transposed convolution that is this convolution's input grad.


def conv_fwd(x, w, s, padding, dtype, flip=False):
  """(B,H,W,C) x (k,k,C,O), both of one dtype -> (B,Ho,Wo,O) in `dtype`."""
  k = w.shape[0]
  shape = (x.shape[0], _out_size(x.shape[1], k, s, padding[0]),
           _out_size(x.shape[2], k, s, padding[1]),
           w.shape[2] if flip else w.shape[3])
  return _call('jaxcolor_dnnl_conv_fwd', shape, dtype, x, w, s, padding, flip)


def conv_bwd_data(dy, w, s, padding, x_shape, dtype, flip=False):
  """The input grad (x_shape, `dtype`) of `conv_fwd` from dy and w."""
  return _call('jaxcolor_dnnl_conv_bwd_data', x_shape, dtype, dy, w, s,
               padding, flip)


def conv_bwd_weights(x, dy, s, padding, w_shape, flip=False):
  """The weight grad (w_shape, float32) of `conv_fwd` from x and dy."""
  return _call('jaxcolor_dnnl_conv_bwd_weights', w_shape, jnp.float32, x, dy,
               s, padding, flip)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, s, padding):
  """Equals lax.conv_general_dilated(x, kernel, (s, s), padding) (NHWC,
  HWIO, explicit ((lo, hi), (lo, hi)) padding), in x's dtype."""
  _require()
  return conv_fwd(x, kernel.astype(x.dtype), s, padding, x.dtype)


def _conv_fwd(x, kernel, s, padding):
  return conv(x, kernel, s, padding), (x, kernel)


def _conv_bwd(s, padding, res, g):
  x, kernel = res
  g = g.astype(x.dtype)
  gx = conv_bwd_data(g, kernel.astype(x.dtype), s, padding, x.shape, x.dtype)
  gw = conv_bwd_weights(x, g, s, padding, kernel.shape)
  return gx, gw.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


def _forward_padding(k, padding):
  """lax.conv_transpose's padding -> that of the convolution whose input
  grad it is."""
  return tuple((k - 1 - lo, k - 1 - hi) for lo, hi in padding)


def _transpose_shape(x_shape, k, s, padding, features):
  return (x_shape[0],) + tuple(
      (n - 1) * s + 1 + lo + hi - k + 1
      for n, (lo, hi) in zip(x_shape[1:3], padding)) + (features,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose(x, kernel, s, padding):
  """Equals lax.conv_transpose(x, kernel, (s, s), padding) (NHWC, HWIO,
  no kernel flip), in x's dtype."""
  _require()
  k = kernel.shape[0]
  shape = _transpose_shape(x.shape, k, s, padding, kernel.shape[-1])
  return conv_bwd_data(x, kernel.astype(x.dtype), s,
                       _forward_padding(k, padding), shape, x.dtype,
                       flip=True)


def _conv_transpose_fwd(x, kernel, s, padding):
  return conv_transpose(x, kernel, s, padding), (x, kernel)


def _conv_transpose_bwd(s, padding, res, g):
  x, kernel = res
  g = g.astype(x.dtype)
  fpad = _forward_padding(kernel.shape[0], padding)
  gx = conv_fwd(g, kernel.astype(x.dtype), s, fpad, x.dtype, flip=True)
  gw = conv_bwd_weights(g, x, s, fpad, kernel.shape, flip=True)
  return gx, gw.astype(kernel.dtype)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
