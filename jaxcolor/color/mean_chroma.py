"""The training set's mean chroma: the constant-tint baseline.

Written once per run to `<workdir>/chroma.json` as (Cr, Cb) in 8-bit
YCrCb units (`jaxcolor.color.ycrcb`; 128 is neutral), over up to
config.data.chroma_stats_images training photos at model size. Only finite
pixel values count; a mean that is not finite anyway is an error, never a
file, and a chroma.json that holds one is damaged.
"""

import json
import math
import os
from typing import Any, Iterable, Optional

from absl import logging
import numpy as np

from jaxcolor.color import ycrcb
from jaxcolor.runtime import files

FILE = 'chroma.json'


def _training_rgbs(data: Any, limit: int, loader: Any):
  """Yields (name, RGB uint8 (S, S, 3)) for up to `limit` training-split
  photos at model size; `loader` (a `pipeline.Loader` of the train split of
  `data`, the run's `pipeline.Data`) skips, names and counts unusable ones.
  """
  split = loader.split
  items = split.source
  n = len(items)
  # Evenly spread over the (sorted) split, not its first `limit` entries.
  for i in np.unique(np.linspace(0, n - 1, min(limit, n)).astype(int)):
    element = items[int(i)]
    example = loader(element)
    if example is not None:
      yield split.describe(element), example['rgb']


def chroma_mean(rgbs: Iterable[tuple[str, np.ndarray]]
                ) -> tuple[Optional[tuple[float, float]], int]:
  """Mean (Cr, Cb) in 8-bit units over the finite pixels of RGB images.

  Args:
    rgbs: (name, RGB (H, W, 3) in [0, 255], any dtype) pairs. Pixels with
      a NaN or infinite chroma are left out, with a warning naming the image.

  Returns:
    ((cr, cb), images with a finite pixel), or (None, 0) without any.

  Raises:
    ValueError: the mean is not finite (says why).
  """
  total, count, images = np.zeros(2, np.float64), 0, 0
  for name, rgb in rgbs:
    with np.errstate(invalid='ignore', over='ignore'):  # counted below
      _, chroma = ycrcb.split(rgb)
    chroma = chroma.reshape(-1, 2).astype(np.float64)
    finite = np.isfinite(chroma).all(1)
    kept = int(finite.sum())
    if kept < finite.size:
      logging.warning('Mean chroma: %d of %d pixels of %s are not finite (NaN '
                      'or infinite); left out', finite.size - kept,
                      finite.size, name)
    if not kept:
      continue
    total += chroma[finite].sum(0)
    count += kept
    images += 1
  if not count:
    return None, 0
  cr, cb = total / count + ycrcb.NEUTRAL
  if not (math.isfinite(cr) and math.isfinite(cb)):
    raise ValueError(f'the mean chroma over {images} training photos is not '
                     f'finite ({cr}, {cb}): their sum overflowed; {FILE} is '
                     'not written')
  return (float(cr), float(cb)), images


def training_mean(config: Any, data: Any = None
                  ) -> tuple[Optional[tuple[float, float]], int]:
  """Mean (Cr, Cb) over up to config.data.chroma_stats_images training photos.

  Photos are taken at model size, as training sees them; `data` is the
  run's `pipeline.Data` (resolved from `config` when None). Unusable photos
  and records are skipped with a warning, as in training. Returns
  ((cr, cb) in 8-bit units, photos used), or (None, 0) if none was usable.

  Raises:
    ValueError: the mean is not finite (see `chroma_mean`).
  """
  if data is None:
    from jaxcolor.data import pipeline  # pylint: disable=g-import-not-at-top
    data = pipeline.Data.create(config, process_index=0, process_count=1)
  limit = int(config.data.get('chroma_stats_images', 2000))
  _, loader = data.loader('train')
  mean, images = chroma_mean(_training_rgbs(data, limit, loader))
  if loader.skipped:
    logging.warning('Mean chroma: %d training %s skipped (%s)',
                    sum(loader.skipped.values()),
                    'photo(s)' if loader.split.kind == 'folder'
                    else 'record(s)', loader.summary())
  return mean, images


def write(path: str, mean: tuple[float, float], images: int) -> None:
  """Writes a chroma.json (`path` is its folder), atomically.

  Raises:
    ValueError: `mean` is not finite (nothing is written).
  """
  if not all(math.isfinite(float(v)) for v in mean):
    raise ValueError(f'not writing {os.path.join(path, FILE)}: the mean '
                     f'chroma {tuple(mean)} is not finite')
  files.write_json(os.path.join(path, FILE),
                   {'space': ycrcb.SPACE,
                    'mean_chroma_cr_cb': [float(v) for v in mean],
                    'images': images}, indent=1, allow_nan=False)


def _load(file: str) -> tuple[Optional[tuple[float, float]], str]:
  """(value, '') from `file`, (None, '') if absent, (None, why) if damaged
  (a FIFO or other non-regular file is never opened)."""
  if not os.path.lexists(file):
    return None, ''
  try:
    text = files.read_regular(file, 2**20, 'the limit')
  except ValueError as e:  # not a regular file, or too large
    return None, str(e)
  except OSError as e:
    return None, e.strerror or str(e)
  try:
    cr, cb = json.loads(text)['mean_chroma_cr_cb']
    cr, cb = float(cr), float(cb)
  except (ValueError, KeyError, TypeError) as e:
    return None, f'{type(e).__name__}: {e}'
  if not (math.isfinite(cr) and math.isfinite(cb)):
    return None, f'the mean chroma ({cr}, {cb}) is not finite'
  return (cr, cb), ''


def read(path: str) -> Optional[tuple[float, float]]:
  """(Cr, Cb) from `path`/chroma.json, or None if there is none.

  Raises:
    ValueError: the file is damaged or holds a non-finite mean (names it,
      and what to do).
  """
  file = os.path.join(path, FILE)
  value, why = _load(file)
  if why:
    raise ValueError(f'{file} is damaged ({why}); delete it and it is '
                     'computed again from the training data')
  return value


def ensure_written(config: Any, workdir: str, data: Any = None
                   ) -> Optional[tuple[float, float]]:
  """Computes and writes `workdir`/chroma.json unless it exists; its value.

  A damaged one (unreadable, or a non-finite mean) is computed again and
  replaced. Does nothing (None) when config.data.chroma_stats_images is 0.

  Raises:
    ValueError: the mean is not finite (nothing is written).
  """
  file = os.path.join(workdir, FILE)
  existing, why = _load(file)
  if why:
    logging.warning('%s is damaged (%s); computing it again from the '
                    'training data.', file, why)
  if existing is not None or not config.data.get('chroma_stats_images', 2000):
    return existing
  mean, images = training_mean(config, data)
  if mean is None:
    logging.warning('No usable training photo for the mean chroma; %s not '
                    'written.', FILE)
    return None
  write(workdir, mean, images)
  logging.info('Mean training chroma (Cr, Cb) = (%.2f, %.2f) over %d photos '
               '-> %s', mean[0], mean[1], images, file)
  return mean
