"""Image quality metrics: PSNR and SSIM (dm-pix) and colourfulness.

Images are RGB (H, W, 3) or batches (K, H, W, 3), either uint8 in [0, 255]
or float in [0, 1]. PSNR and SSIM are computed on [0, 1] values (peak 1),
colourfulness on [0, 255] values, as Hasler and Suesstrunk define it.
"""

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

# dm_pix.ssim's Gaussian window: images need at least this many pixels a side.
SSIM_FILTER_SIZE = 11


def unit_float(image) -> np.ndarray:
  """uint8 [0, 255] -> float32 [0, 1]; float input is taken as [0, 1]."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  return image.astype(np.float32)


def colourfulness(rgb) -> np.ndarray:
  """Hasler & Suesstrunk (2003) colourfulness M of each image.

  rg = R - G, yb = (R + G) / 2 - B on 0..255 values;
  M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2).
  A gray image scores 0; the authors call M > 59 'extremely colourful'.

  Args:
    rgb: (..., H, W, 3), uint8 or float in [0, 1].
  Returns:
    float64 array of shape (...,) (a 0-d array for one image).
  """
  x = unit_float(rgb).astype(np.float64) * 255.0
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  rg = r - g
  yb = 0.5 * (r + g) - b
  axes = (-2, -1)
  std = np.sqrt(rg.var(axis=axes) + yb.var(axis=axes))
  mean = np.sqrt(rg.mean(axis=axes) ** 2 + yb.mean(axis=axes) ** 2)
  return std + 0.3 * mean


@functools.partial(jax.jit, static_argnames='with_ssim')
def _psnr_ssim(reference, candidates, with_ssim):
  reference = jnp.broadcast_to(reference, candidates.shape)
  psnr = dm_pix.psnr(reference, candidates)
  if with_ssim:
    ssim = dm_pix.ssim(reference, candidates)
  else:
    ssim = jnp.full_like(psnr, jnp.nan)
  return psnr, ssim


def psnr_ssim(reference, candidates) -> tuple[np.ndarray, np.ndarray]:
  """dm-pix PSNR (dB) and SSIM of each candidate against one reference.

  Compiled once per image shape. PSNR is +inf for an exact copy. SSIM is NaN
  when a side is shorter than the 11-px SSIM window.

  Args:
    reference: (H, W, 3), uint8 or float in [0, 1].
    candidates: (K, H, W, 3), same size, uint8 or float in [0, 1].
  Returns:
    (psnr, ssim), float64 arrays of shape (K,).
  """
  reference, candidates = unit_float(reference), unit_float(candidates)
  if candidates.shape[1:] != reference.shape:
    raise ValueError(f'candidates {candidates.shape} do not match the '
                     f'reference {reference.shape}')
  with_ssim = min(reference.shape[:2]) >= SSIM_FILTER_SIZE
  psnr, ssim = _psnr_ssim(reference, candidates, with_ssim)
  return np.asarray(psnr, np.float64), np.asarray(ssim, np.float64)


def psnr(reference, image) -> float:
  """PSNR (dB) of one image against a reference; see psnr_ssim."""
  return float(psnr_ssim(reference, np.asarray(image)[None])[0][0])


def ssim(reference, image) -> float:
  """SSIM of one image against a reference; see psnr_ssim."""
  return float(psnr_ssim(reference, np.asarray(image)[None])[1][0])
