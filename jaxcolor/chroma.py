"""Chroma in the recombination space (YCrCb, BT.601) and its training mean.

Colorized photos are recombined from the input's own luminance and the
model's chroma in YCrCb with OpenCV's constants for 8-bit images:

  Y  = 0.299 R + 0.587 G + 0.114 B   (the same weights as cv2 RGB->GRAY,
                                      so Y of a gray input is its value)
  Cr = 0.713 (R - Y) + 128
  Cb = 0.564 (B - Y) + 128

RGB and Y are in [0, 255]; chroma is kept as offsets (Cr - 128, Cb - 128).
`merge` inverts this exactly for Y and shrinks the chroma of a pixel
towards gray where its colour would leave the RGB cube, so the output's
luminance is the input's up to rounding to 8 bit. `rgb_from_chroma` is
the same inverse, differentiable and unclipped, for models that predict
chroma (the GAN's model.output='chroma').

The training set's mean chroma (the "constant tint" baseline) is written
once per run to `<workdir>/chroma.json` as (Cr, Cb) in 8-bit units (128 is
neutral).
"""

import json
import os
from typing import Any, Optional

from absl import logging
import numpy as np

FILE = 'chroma.json'
SPACE = 'YCrCb (BT.601, OpenCV 8-bit constants)'
NEUTRAL = 128.0
_W = np.array([0.299, 0.587, 0.114], np.float32)  # R, G, B weights of Y
_CR, _CB = 0.713, 0.564


def split(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """RGB (..., 3) in [0, 255] (any dtype) -> (Y (...), chroma (..., 2)).

  Chroma is (Cr - 128, Cb - 128), float32.
  """
  rgb = np.asarray(rgb, np.float32)
  y = rgb @ _W
  chroma = np.stack([_CR * (rgb[..., 0] - y), _CB * (rgb[..., 2] - y)], -1)
  return y, chroma


def rgb_from_chroma(y, chroma):
  """Y (..., 1) + chroma offsets (..., 2) -> RGB (..., 3), in Y's units.

  Linear, so it holds in any units that map 0 to 0 (e.g. [-1, 1] images,
  whose offsets are (Cr - 128) / 127.5): BT.601 Y of the result is `y` up
  to float rounding. Not clipped: colours may leave the RGB cube. A jax
  array, differentiable.
  """
  # Imported here: the host-side helpers of this module need only numpy.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dr = chroma[..., 0:1] * (1.0 / _CR)
  db = chroma[..., 1:2] * (1.0 / _CB)
  dg = (dr * -float(_W[0]) - db * float(_W[2])) * (1.0 / float(_W[1]))
  return jnp.concatenate((y + dr, y + dg, y + db), axis=-1)


def merge(y: np.ndarray, chroma: np.ndarray) -> np.ndarray:
  """Y (H, W) in [0, 255] + chroma offsets (H, W, 2) -> RGB uint8 (H, W, 3).

  Out-of-gamut colours are desaturated (chroma scaled towards 0) until they
  fit, so Y is kept rather than clipped.
  """
  y = np.asarray(y, np.float32)
  chroma = np.asarray(chroma, np.float32)
  # RGB = Y + s * d keeps Y for every s; d per channel:
  dr = chroma[..., 0] * np.float32(1.0 / _CR)
  db = chroma[..., 1] * np.float32(1.0 / _CB)
  dg = (dr * -_W[0] - db * _W[2]) / _W[1]
  # The weighted mean of d is 0, so max(d) >= 0 >= min(d): the largest s
  # with 0 <= Y + s * d <= 255 is min((255 - Y) / max(d), Y / -min(d)).
  # (The floor of 1e-6 avoids 0 / 0 where d == 0.)
  up = np.maximum(np.maximum(np.maximum(dr, dg), db), 1e-6)
  down = np.maximum(-np.minimum(np.minimum(dr, dg), db), 1e-6)
  s = np.minimum((255.0 - y) / up, y / down)
  np.minimum(s, 1.0, out=s)
  out = np.empty(y.shape + (3,), np.uint8)
  for i, d in enumerate((dr, dg, db)):
    d *= s
    d += y
    np.rint(d, out=d)
    out[..., i] = np.clip(d, 0.0, 255.0)
  return out


# ---------------------------------------------------------------- statistics
def _training_rgbs(data: Any, limit: int):
  """Yields up to `limit` training-split photos at model size, RGB uint8.

  `data` is the run's `pipeline.Data`.
  """
  # Imported here: the colorize path needs only split/merge.
  from jaxcolor.data import preprocess  # pylint: disable=g-import-not-at-top
  split = data.split('train')
  opts = preprocess.Options.from_config(data.config.data)
  items = split.source
  n = len(items)
  # Evenly spread over the (sorted) split, not its first `limit` entries.
  for i in np.unique(np.linspace(0, n - 1, min(limit, n)).astype(int)):
    try:
      yield split.load(items[int(i)], opts)['rgb']
    except preprocess.BadImageError:
      continue


def training_mean(config: Any, data: Any = None
                  ) -> tuple[Optional[tuple[float, float]], int]:
  """Mean (Cr, Cb) over up to config.data.chroma_stats_images training photos.

  Photos are taken at model size, as training sees them; `data` is the
  run's `pipeline.Data` (resolved from `config` when None). Returns
  ((cr, cb) in 8-bit units, photos used), or (None, 0) if none was usable.
  """
  if data is None:
    from jaxcolor.data import pipeline  # pylint: disable=g-import-not-at-top
    data = pipeline.Data.create(config, process_index=0, process_count=1)
  limit = int(config.data.get('chroma_stats_images', 2000))
  total, count, images = np.zeros(2, np.float64), 0, 0
  for rgb in _training_rgbs(data, limit):
    _, chroma = split(rgb)
    total += chroma.reshape(-1, 2).sum(0, dtype=np.float64)
    count += chroma.shape[0] * chroma.shape[1]
    images += 1
  if not count:
    return None, 0
  cr, cb = total / count + NEUTRAL
  return (float(cr), float(cb)), images


def write(path: str, mean: tuple[float, float], images: int) -> None:
  """Writes a chroma.json (`path` is its folder)."""
  os.makedirs(path, exist_ok=True)
  tmp = os.path.join(path, FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump({'space': SPACE, 'mean_chroma_cr_cb': list(mean),
               'images': images}, f, indent=1)
  os.replace(tmp, os.path.join(path, FILE))


def read(path: str) -> Optional[tuple[float, float]]:
  """(Cr, Cb) from `path`/chroma.json, or None if there is none.

  Raises:
    ValueError: the file is damaged (names it, and what to do).
  """
  file = os.path.join(path, FILE)
  try:
    with open(file) as f:
      saved = json.load(f)
    cr, cb = saved['mean_chroma_cr_cb']
    return float(cr), float(cb)
  except FileNotFoundError:
    return None
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{file} is damaged ({type(e).__name__}: {e}); delete '
                     'it and it is computed again from the training data') from e


def ensure_written(config: Any, workdir: str, data: Any = None
                   ) -> Optional[tuple[float, float]]:
  """Computes and writes `workdir`/chroma.json unless it exists; its value.

  Does nothing (None) when config.data.chroma_stats_images is 0.
  """
  existing = read(workdir)
  if existing is not None or not config.data.get('chroma_stats_images', 2000):
    return existing
  mean, images = training_mean(config, data)
  if mean is None:
    logging.warning('No usable training photo for the mean chroma; %s not '
                    'written.', FILE)
    return None
  write(workdir, mean, images)
  logging.info('Mean training chroma (Cr, Cb) = (%.2f, %.2f) over %d photos '
               '-> %s', mean[0], mean[1], images, os.path.join(workdir, FILE))
  return mean
