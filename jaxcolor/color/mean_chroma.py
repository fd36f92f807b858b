"""The training set's mean chroma: the constant-tint baseline.

Written once per run to `<workdir>/chroma.json` as (Cr, Cb) in 8-bit
YCrCb units (`jaxcolor.color.ycrcb`; 128 is neutral), over up to
config.data.chroma_stats_images training photos at model size.
"""

import json
import os
from typing import Any, Optional

from absl import logging
import numpy as np

from jaxcolor.color import ycrcb

FILE = 'chroma.json'


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
    _, chroma = ycrcb.split(rgb)
    total += chroma.reshape(-1, 2).sum(0, dtype=np.float64)
    count += chroma.shape[0] * chroma.shape[1]
    images += 1
  if not count:
    return None, 0
  cr, cb = total / count + ycrcb.NEUTRAL
  return (float(cr), float(cb)), images


def write(path: str, mean: tuple[float, float], images: int) -> None:
  """Writes a chroma.json (`path` is its folder)."""
  os.makedirs(path, exist_ok=True)
  tmp = os.path.join(path, FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump({'space': ycrcb.SPACE, 'mean_chroma_cr_cb': list(mean),
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
