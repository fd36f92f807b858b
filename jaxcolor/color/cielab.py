"""sRGB <-> CIE L*a*b* (D65) in jnp, with OpenCV's constants.

Ranges (float32, any leading shape, channels last):

  sRGB  (..., 3) in [0, 1], gamma-encoded (as decoded from a JPEG / 255).
  Lab   (..., 3): L in [0, 100]; a in about [-86, 98], b in about [-108, 95]
        for in-gamut colours (|a|, |b| <= 127 bounds them).

The conversion matches `cv2.cvtColor(rgb01_float32, cv2.COLOR_RGB2Lab)`
(and `COLOR_Lab2RGB`): sRGB gamma, OpenCV's sRGB->XYZ matrix and D65 white
point, and its CIE constants (0.008856, 7.787, 903.3). The inverse uses the
exact inverse matrix, so Lab -> RGB -> Lab is an identity up to float error.
Every branch is evaluated on clamped inputs, so gradients are finite.
"""

import jax.numpy as jnp
import numpy as np

from jaxcolor.data import preprocess

# OpenCV's sRGB (D65) -> XYZ matrix (imgproc/src/color_lab.cpp).
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], np.float64)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = np.array([0.950456, 1.0, 1.088754], np.float64)

_EPS = 0.008856    # (6/29)^3
_KAPPA = 903.3     # (29/3)^3
_SLOPE = 7.787     # KAPPA / 116
_F_EPS = 16.0 / 116.0 + _SLOPE * _EPS  # f(_EPS) ~= 6/29

L_MAX = 100.0


def srgb_to_linear(rgb: jnp.ndarray) -> jnp.ndarray:
  """Gamma-encoded sRGB in [0, 1] -> linear RGB in [0, 1]."""
  rgb = jnp.asarray(rgb, jnp.float32)
  curve = ((jnp.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4
  return jnp.where(rgb <= 0.04045, rgb / 12.92, curve)


def linear_to_srgb(lin: jnp.ndarray) -> jnp.ndarray:
  """Linear RGB -> gamma-encoded sRGB (not clipped)."""
  curve = 1.055 * jnp.maximum(lin, 0.0031308) ** (1.0 / 2.4) - 0.055
  return jnp.where(lin <= 0.0031308, 12.92 * lin, curve)


def _matmul3(x: jnp.ndarray, m: np.ndarray) -> jnp.ndarray:
  return jnp.einsum('...c,rc->...r', x, jnp.asarray(m, jnp.float32))


def rgb_to_lab(rgb01: jnp.ndarray) -> jnp.ndarray:
  """sRGB (..., 3) in [0, 1] -> Lab (..., 3), L in [0, 100], float32."""
  rgb01 = jnp.asarray(rgb01, jnp.float32)
  if rgb01.shape[-1:] != (3,):
    raise ValueError(f'rgb_to_lab expects (..., 3) RGB; got {rgb01.shape}')
  xyz = _matmul3(srgb_to_linear(rgb01), _RGB_TO_XYZ)
  t = xyz / jnp.asarray(_WHITE_D65, jnp.float32)
  f = jnp.where(t > _EPS, jnp.cbrt(jnp.maximum(t, _EPS)),
                _SLOPE * t + 16.0 / 116.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  ty = t[..., 1]
  l = jnp.where(ty > _EPS, 116.0 * fy - 16.0, _KAPPA * ty)
  a = 500.0 * (fx - fy)
  b = 200.0 * (fy - fz)
  return jnp.stack([l, a, b], axis=-1)


def lab_to_rgb(lab: jnp.ndarray) -> jnp.ndarray:
  """Lab (..., 3) -> sRGB (..., 3), float32.

  In-gamut colours land in [0, 1]; out-of-gamut ones fall outside it (not
  clipped: clip with `jnp.clip(rgb, 0, 1)` for display).
  """
  lab = jnp.asarray(lab, jnp.float32)
  if lab.shape[-1:] != (3,):
    raise ValueError(f'lab_to_rgb expects (..., 3) Lab; got {lab.shape}')
  l, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
  # Inverse of L(Y): linear below L = KAPPA * EPS (~8), cubic above.
  low = l <= _KAPPA * _EPS
  ty = jnp.where(low, l / _KAPPA,
                 ((jnp.maximum(l, _KAPPA * _EPS) + 16.0) / 116.0) ** 3)
  fy = jnp.where(low, _SLOPE * ty + 16.0 / 116.0, (l + 16.0) / 116.0)
  f = jnp.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
  t = jnp.where(f > _F_EPS, f ** 3, (f - 16.0 / 116.0) / _SLOPE)
  t = t.at[..., 1].set(ty)
  xyz = t * jnp.asarray(_WHITE_D65, jnp.float32)
  return linear_to_srgb(_matmul3(xyz, _XYZ_TO_RGB))


def to_unit_rgb(rgb: jnp.ndarray) -> jnp.ndarray:
  """A batch's RGB -> float32 in [0, 1].

  uint8 in [0, 255] is divided by 255; any float dtype is taken to be in
  [-1, 1] (the model convention of `jaxcolor.data.preprocess.normalize`)
  and mapped by (x + 1) / 2, clipped to [0, 1].
  """
  rgb = jnp.asarray(rgb)
  if rgb.dtype == jnp.uint8:
    return rgb.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(rgb.dtype, jnp.floating):
    raise ValueError(f'RGB must be uint8 or float in [-1, 1]; got {rgb.dtype}')
  return jnp.clip(preprocess.to_unit(rgb.astype(jnp.float32)), 0.0, 1.0)


def normalize_l(l: jnp.ndarray) -> jnp.ndarray:
  """Lightness L in [0, 100] -> network input L / 50 - 1 in [-1, 1]."""
  return jnp.asarray(l, jnp.float32) / (L_MAX / 2) - 1.0


def denormalize_l(l_norm: jnp.ndarray) -> jnp.ndarray:
  """Inverse of `normalize_l`: [-1, 1] -> L in [0, 100]."""
  return (jnp.asarray(l_norm, jnp.float32) + 1.0) * (L_MAX / 2)
