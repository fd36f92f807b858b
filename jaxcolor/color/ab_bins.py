"""Quantised ab space of Zhang et al. (ECCV 2016): targets, weights, decoding.

Colour is predicted as a distribution over Q = 313 in-gamut ab bins (grid
step 10; centres in `jaxcolor/data/colorization/pts_in_hull.npy`). This
module holds everything that maps between ab values and that distribution:

  load_bins / load_prior   the release's bin centres and ImageNet prior.
  prior_from_ab            an empirical prior from training-set ab values.
  smooth_prior             Gaussian (sigma 5) smoothing over the ab grid.
  rebalance_weights        w ∝ ((1 - λ) p̃ + λ / Q)^-1, E_p̃[w] = 1.
  soft_encode              ab -> Gaussian soft-encoding over the 5 nearest bins.
  encode_targets           an RGB batch -> (soft targets, per-pixel weights) at
                           the network's output resolution.
  annealed_mean / decode_rgb  logits -> ab (T = 0.38) -> RGB.

ab values are in Lab units (a, b roughly in [-110, 100]); L in [0, 100].
"""

import os
from typing import Iterable, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxcolor.color import cielab

NUM_BINS = 313
TABLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'data', 'colorization')


def _load_table(name: str, path: str = '') -> np.ndarray:
  path = path or os.path.join(TABLE_DIR, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f'CIC table {path!r} is missing (it ships with '
                            f'jaxcolor in jaxcolor/data/colorization/)')
  return np.load(path)


def load_bins(path: str = '') -> np.ndarray:
  """The 313 ab bin centres, (313, 2) float32, in Lab units."""
  bins = _load_table('pts_in_hull.npy', path).astype(np.float32)
  if bins.shape != (NUM_BINS, 2):
    raise ValueError(f'ab bin table must be (313, 2); got {bins.shape}')
  return bins


def load_prior(path: str = '') -> np.ndarray:
  """The release's empirical ImageNet prior over the bins, (313,) float64."""
  prior = _load_table('prior_probs.npy', path).astype(np.float64)
  if prior.shape != (NUM_BINS,):
    raise ValueError(f'prior table must be (313,); got {prior.shape}')
  return prior


def _sq_dist(ab: jnp.ndarray, bins: jnp.ndarray) -> jnp.ndarray:
  """(..., 2), (Q, 2) -> squared distances (..., Q), float32."""
  diff = ab[..., None, :] - jnp.asarray(bins, jnp.float32)
  return jnp.sum(diff * diff, axis=-1)


def nearest_bin(ab: jnp.ndarray, bins: jnp.ndarray) -> jnp.ndarray:
  """Index of the nearest bin centre: (..., 2) -> (...,) int32."""
  return jnp.argmin(_sq_dist(jnp.asarray(ab, jnp.float32), bins), axis=-1)


@jax.jit
def _count_chunk(ab, bins, valid):
  """Per-bin counts of the valid rows of ab (N, 2) -> (Q,) float32."""
  return jnp.bincount(nearest_bin(ab, bins), weights=valid,
                      length=bins.shape[0])


def prior_from_ab(ab: Union[np.ndarray, Iterable[np.ndarray]],
                  bins: Union[np.ndarray, None] = None,
                  chunk: int = 65536) -> np.ndarray:
  """Empirical prior over the bins from ab values, (313,) float64, sums to 1.

  Each ab value counts for its nearest bin (values outside the gamut count
  for the closest in-gamut bin). Not smoothed: `rebalance_weights` smooths.

  Args:
    ab: an array (..., 2) of ab values in Lab units, or an iterable of such
      arrays (e.g. one per training image: `cielab.rgb_to_lab(rgb)[..., 1:]`).
    bins: (313, 2) bin centres; default `load_bins()`.
    chunk: values per device call (bounds memory at chunk * 313 floats).
  """
  bins = load_bins() if bins is None else np.asarray(bins, np.float32)
  arrays = [ab] if isinstance(ab, (np.ndarray, jax.Array)) else ab
  counts = np.zeros(bins.shape[0], np.float64)
  for arr in arrays:
    arr = np.asarray(arr, np.float32)
    if arr.shape[-1:] != (2,):
      raise ValueError(f'prior_from_ab expects (..., 2) ab arrays; got '
                       f'{arr.shape}')
    flat = arr.reshape(-1, 2)
    if not np.all(np.isfinite(flat)):
      raise ValueError('prior_from_ab: ab values contain NaN or inf')
    for start in range(0, flat.shape[0], chunk):
      part = flat[start:start + chunk]
      n = part.shape[0]
      # Pad to a fixed chunk so one compiled function serves every call.
      padded = np.zeros((chunk, 2), np.float32)
      padded[:n] = part
      valid = (np.arange(chunk) < n).astype(np.float32)
      counts += np.asarray(_count_chunk(padded, bins, valid), np.float64)
  total = counts.sum()
  if total <= 0:
    raise ValueError('prior_from_ab: no ab values given')
  return counts / total


def smooth_prior(prior: np.ndarray, bins: Union[np.ndarray, None] = None,
                 sigma: float = 5.0) -> np.ndarray:
  """Gaussian smoothing of a prior over the ab grid, (313,) float64.

  Each bin's mass is spread over the in-gamut bins with weights
  exp(-|c_i - c_j|^2 / (2 sigma^2)), normalised per source bin, so the result
  still sums to 1. sigma = 0 returns the prior unchanged (renormalised).
  """
  prior = np.asarray(prior, np.float64)
  if prior.shape != (NUM_BINS,) or np.any(prior < 0) or prior.sum() <= 0:
    raise ValueError(f'prior must be (313,) non-negative with positive sum; '
                     f'got shape {prior.shape}')
  prior = prior / prior.sum()
  if sigma <= 0:
    return prior
  bins = load_bins() if bins is None else np.asarray(bins, np.float64)
  d2 = np.sum((bins[:, None, :] - bins[None, :, :]) ** 2, axis=-1)
  kernel = np.exp(-d2 / (2.0 * sigma ** 2))      # [to i, from j]
  kernel /= kernel.sum(axis=0, keepdims=True)    # each source keeps its mass
  smoothed = kernel @ prior
  return smoothed / smoothed.sum()


def rebalance_weights(prior: np.ndarray, lam: float = 0.5, sigma: float = 5.0,
                      bins: Union[np.ndarray, None] = None) -> np.ndarray:
  """Class-rebalancing weights, (313,) float32 (paper eq. 3-4).

  w_q ∝ ((1 - lam) p̃_q + lam / Q)^-1 with p̃ = smooth_prior(prior, sigma),
  scaled so the p̃-weighted mean sum_q p̃_q w_q is 1. Rare colours get
  larger weights; lam = 1 gives all ones.
  """
  if not 0.0 < lam <= 1.0:
    raise ValueError(f'lam must be in (0, 1]; got {lam}')
  p = smooth_prior(prior, bins, sigma)
  w = 1.0 / ((1.0 - lam) * p + lam / p.shape[0])
  w /= np.sum(p * w)
  return w.astype(np.float32)


# Lab a and b of sRGB colours lie within [-GRID_EXTENT, GRID_EXTENT].
GRID_EXTENT = 128


def weight_grid(bins: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Per-colour weights on the integer ab grid, (2E+1, 2E+1) float32.

  grid[a + E, b + E] = weights[nearest bin of (a, b)] for integer a, b in
  [-E, E], E = GRID_EXTENT: a per-pixel lookup (`grid_lookup`) in place of
  a distance to all Q bins for every pixel.
  """
  axis = np.arange(-GRID_EXTENT, GRID_EXTENT + 1, dtype=np.float32)
  ab = np.stack(np.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)
  nearest = np.asarray(nearest_bin(ab, bins))
  return np.asarray(weights, np.float32)[nearest].reshape(axis.size, axis.size)


def grid_lookup(grid: jnp.ndarray, ab: jnp.ndarray) -> jnp.ndarray:
  """`weight_grid` values at ab (..., 2) in Lab units, rounded to integers:
  (...,) float32. ab beyond the grid takes its edge."""
  i = jnp.clip(jnp.round(ab).astype(jnp.int32) + GRID_EXTENT, 0,
               2 * GRID_EXTENT)
  return jnp.asarray(grid)[i[..., 0], i[..., 1]]


def _encode(ab: jnp.ndarray, bins: jnp.ndarray, k: int, sigma: float):
  """(soft-encoding (..., Q), nearest bin index (...,))."""
  ab = jnp.asarray(ab, jnp.float32)
  if ab.shape[-1:] != (2,):
    raise ValueError(f'soft_encode expects (..., 2) ab; got {ab.shape}')
  q = bins.shape[0]
  if not 1 <= k <= q:
    raise ValueError(f'k must be in 1..{q}; got {k}')
  neg, idx = jax.lax.top_k(-_sq_dist(ab, bins), k)  # nearest first
  d2 = -neg
  # Subtracting the nearest distance keeps far-out-of-gamut ab finite.
  w = jnp.exp(-(d2 - d2[..., :1]) / (2.0 * sigma ** 2))
  w = w / jnp.sum(w, axis=-1, keepdims=True)
  flat_idx = idx.reshape(-1, k)
  rows = jnp.arange(flat_idx.shape[0])[:, None]
  soft = jnp.zeros((flat_idx.shape[0], q), jnp.float32)
  soft = soft.at[rows, flat_idx].set(w.reshape(-1, k))
  return soft.reshape(ab.shape[:-1] + (q,)), idx[..., 0]


def soft_encode(ab: jnp.ndarray, bins: jnp.ndarray, k: int = 5,
                sigma: float = 5.0) -> jnp.ndarray:
  """ab (..., 2) -> soft-encoding (..., Q) float32; rows sum to 1.

  The k nearest bins get exp(-d^2 / (2 sigma^2)), normalised; the rest 0.
  """
  return _encode(ab, bins, k, sigma)[0]


def _pool(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """Mean-pools (B, H, W, C) to (B, h, w, C); H, W must be multiples."""
  b, hh, ww, c = x.shape
  h, w = size
  if hh % h or ww % w:
    raise ValueError(f'target size {size} must divide the image size '
                     f'{(hh, ww)}')
  x = x.reshape(b, h, hh // h, w, ww // w, c)
  return jnp.mean(x, axis=(2, 4))


def encode_targets(rgb: jnp.ndarray, bins: jnp.ndarray, weights: jnp.ndarray,
                   out_size: Union[int, tuple[int, int]], k: int = 5,
                   sigma: float = 5.0):
  """RGB batch -> (soft targets (B,h,w,Q) float32, pixel weights (B,h,w)).

  Args:
    rgb: (B, H, W, 3), uint8 in [0, 255] or float in [-1, 1].
    bins: (Q, 2) bin centres.
    weights: (Q,) rebalancing weights (`rebalance_weights`).
    out_size: the network's output size h (= H / 4) or (h, w). The image's
      ab is mean-pooled by H/h x W/w before encoding.
    k, sigma: soft-encoding neighbours and Gaussian width.

  The pixel weight is the weight of the ground truth's nearest bin (the
  argmax of its soft-encoding).
  """
  if rgb.ndim != 4 or rgb.shape[-1] != 3:
    raise ValueError(f'encode_targets expects (B, H, W, 3) RGB; got '
                     f'{rgb.shape}')
  ab = cielab.rgb_to_lab(cielab.to_unit_rgb(rgb))[..., 1:]
  return encode_ab_targets(ab, bins, weights, out_size, k, sigma)


def encode_ab_targets(ab: jnp.ndarray, bins: jnp.ndarray,
                      weights: jnp.ndarray,
                      out_size: Union[int, tuple[int, int]], k: int = 5,
                      sigma: float = 5.0):
  """`encode_targets` from the batch's ab (B, H, W, 2) in Lab units."""
  size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
  soft, nearest = _encode(_pool(ab, size), bins, k, sigma)
  pixel_weights = jnp.asarray(weights, jnp.float32)[nearest]
  return soft, pixel_weights


def annealed_mean(logits: jnp.ndarray, bins: jnp.ndarray,
                  temperature: float = 0.38) -> jnp.ndarray:
  """logits (..., Q) -> ab (..., 2) float32: E[c_q] under softmax(log p / T).

  softmax(log p / T) = softmax(logits / T): the log-normaliser cancels.
  T = 1 is the mean, T -> 0 the mode; the paper uses 0.38.
  """
  if temperature <= 0:
    raise ValueError(f'temperature must be > 0; got {temperature}')
  p = jax.nn.softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1)
  return p @ jnp.asarray(bins, jnp.float32)


def decode_rgb(logits: jnp.ndarray, l_full: jnp.ndarray, bins: jnp.ndarray,
               temperature: float = 0.38) -> jnp.ndarray:
  """Network output -> RGB (B, H, W, 3) float32 in [0, 1].

  Args:
    logits: (B, h, w, Q) at the network's resolution.
    l_full: (B, H, W, 1) lightness L in [0, 100] (Lab units) of the input.
    bins: (Q, 2) bin centres.
    temperature: annealed-mean T.

  ab is decoded at (h, w), resized bilinearly to (H, W), joined with L and
  converted to sRGB, clipped to [0, 1].
  """
  if l_full.ndim != 4 or l_full.shape[-1] != 1 or logits.ndim != 4:
    raise ValueError(f'decode_rgb expects logits (B,h,w,Q) and L (B,H,W,1); '
                     f'got {logits.shape} and {l_full.shape}')
  ab = annealed_mean(logits, bins, temperature)
  b, hh, ww, _ = l_full.shape
  ab = jax.image.resize(ab, (b, hh, ww, 2), method='bilinear')
  lab = jnp.concatenate([jnp.asarray(l_full, jnp.float32), ab], axis=-1)
  return jnp.clip(cielab.lab_to_rgb(lab), 0.0, 1.0)
