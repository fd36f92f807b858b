"""Range checks of the shared config keys, before any work starts.

Every count, size and interval of the sections all models share
(configs/common.py) is checked here for type, sign and range, so a bad
value is one line naming the key, not an error deep inside a run. The model
sections are checked by their family (`Family.validate`).
"""

import numbers
from typing import Any

import ml_collections

# key: (lowest allowed, what it means). Values must be integers.
_INTS = {
    'data.image_size': (8, 'the training resolution in pixels'),
    'data.batch_size': (1, 'the global batch'),
    'data.eval_batch_size': (1, 'the global evaluation batch'),
    'data.num_workers': (0, 'Grain worker processes'),
    'data.prefetch_buffer_size': (1, 'batches read ahead per worker'),
    'data.max_image_pixels': (1, 'the largest photo in pixels'),
    'data.max_file_bytes': (1, 'the largest photo file in bytes'),
    'data.prepare_shard_size': (1, 'examples per ArrayRecord shard'),
    'data.prepare_processes': (0, 'prepare worker processes (0: one per core)'),
    'data.chroma_stats_images': (0, 'photos for the mean chroma (0: none)'),
    'data.canny_low': (0, 'a Canny threshold'),
    'data.canny_high': (0, 'a Canny threshold'),
    'num_epochs': (1, 'passes over the training data'),
    'log_every_steps': (1, 'steps between logs'),
    'image_every_steps': (1, 'steps between sample grids'),
    'eval_every_steps': (1, 'steps between evaluations'),
    'checkpoint_every_steps': (1, 'steps between checkpoints'),
    'keep_checkpoints': (1, 'checkpoints kept'),
    'steps_per_call': (1, 'train steps per compiled call'),
    'grad_accum_steps': (1, 'micro-batches per optimiser update'),
    'seed': (0, 'the random seed'),
    'benchmark.num_steps': (1, 'timed calls'),
    'benchmark.warmup_steps': (0, 'untimed calls'),
    'benchmark.num_batches': (1, 'timed batches'),
    'benchmark.warmup_batches': (0, 'untimed batches'),
}
# Integers where -1 means "all" / "from the epochs" and other values are >= 1.
_INTS_OR_ALL = {
    'num_train_steps': 'training steps (-1: from num_epochs)',
    'num_eval_batches': 'evaluation batches (-1: the whole split)',
}


def _get(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    if part not in node:
      return None
    node = node[part]
  return node


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_profile_steps(value: Any) -> None:
  """config.profile_steps: () or (start >= 1, count >= 1)."""
  if value is None or (isinstance(value, (tuple, list)) and not value):
    return
  if not (isinstance(value, (tuple, list)) and len(value) == 2
          and all(_is_int(v) for v in value)):
    raise ValueError(f'config.profile_steps={value!r} must be (start, count), '
                     'two integers, or () for no profiler trace')
  if value[0] < 1 or value[1] < 1:
    raise ValueError(f'config.profile_steps={tuple(value)!r}: the first '
                     'traced step (start) and the number of steps (count) '
                     'must both be >= 1')


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first shared key whose value cannot work."""
  for key, (low, what) in _INTS.items():
    value = _get(config, key)
    if value is None:
      continue
    if not _is_int(value) or value < low:
      raise ValueError(f'config.{key}={value!r}: {what} must be an integer '
                       f'>= {low}')
  for key, what in _INTS_OR_ALL.items():
    value = _get(config, key)
    if value is None:
      continue
    if not _is_int(value) or (value < 1 and value != -1):
      raise ValueError(f'config.{key}={value!r}: {what} must be -1 or an '
                       'integer >= 1')
  frac = _get(config, 'data.val_fraction')
  if frac is not None and not (isinstance(frac, numbers.Real)
                               and 0.0 <= frac < 1.0):
    raise ValueError(f'config.data.val_fraction={frac!r} must be in [0, 1)')
  peak = _get(config, 'benchmark.peak_tflops')
  if peak is not None and not (isinstance(peak, numbers.Real) and peak >= 0):
    raise ValueError(f'config.benchmark.peak_tflops={peak!r} must be >= 0 '
                     '(0: from the table of known accelerators)')
  _check_profile_steps(_get(config, 'profile_steps'))
  k = _get(config, 'steps_per_call')
  for key in ('log_every_steps', 'checkpoint_every_steps', 'eval_every_steps',
              'image_every_steps'):
    value = _get(config, key)
    if k is not None and value is not None and value % k:
      raise ValueError(f'config.{key}={value} must be a multiple of '
                       f'config.steps_per_call={k}')
  low, high = _get(config, 'data.canny_low'), _get(config, 'data.canny_high')
  if low is not None and high is not None and low > high:
    raise ValueError(f'config.data.canny_low={low} is above '
                     f'config.data.canny_high={high}')
