"""Grain input pipelines: shuffled, sharded, batched examples for training.

Training order. All processes see the same global sequence: the split's
examples shuffled with `config.seed`, then again for every further epoch
(Grain folds the epoch into the shuffle seed), repeated forever. Process `p`
of `n` takes positions p, p + n, p + 2n, ... of that sequence, so shards are
disjoint and, together, cover every epoch. Each process then batches its
own stream (`batch_size // n` per process, remainders dropped) in
`num_workers` worker processes. Everything is a pure function of the index,
so `iter(ds).get_state()` / `set_state()` (and orbax via
`grain.checkpoint.CheckpointSave/Restore`) resume at exactly the next batch.

Files that cannot be used (see preprocess.decode_image) become None and are
dropped; a WARNING names the file and the reason, the first time each file
is met in a process, with that process's running count. Batches are dicts of
uint8 numpy arrays: 'rgb' (B, S, S, 3) and 'gray', 'edge', 'saliency'
(B, S, S, 1); the trainer applies `preprocess.normalize` on device. With
`config.model.use_feature_cache`, batches also hold the records' cached
'resnet_features' (B, f, f, 512) in the cache dtype; otherwise that key is
dropped, so records with features serve any config.
"""

import collections
import os
from typing import Any, Optional

from absl import logging
import grain
import ml_collections
import numpy as np

from jaxcolor import feature_cache
from jaxcolor.data import preprocess
from jaxcolor.data import sources


def _worker_init(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(0)  # no OpenCV thread pool inside Grain workers


class _Loader:
  """Photo path or record bytes -> example dict, or None when unusable.

  Called as `loader(element)` or, for augmentation, `loader(element, rng)`.
  `skipped` counts the skips of this process by reason.
  """

  def __init__(self, opts: preprocess.Options, from_records: bool,
               keep_features: bool = False):
    self.opts = opts
    self.from_records = from_records
    self.keep_features = keep_features
    self.skipped = collections.Counter()
    self._warned = set()

  def __call__(self, element: Any,
               rng: Optional[np.random.Generator] = None) -> Optional[dict]:
    try:
      if self.from_records:
        example = sources.decode_record(element)
        if not self.keep_features:
          example.pop(feature_cache.KEY, None)
        if self.opts.random_flip and rng is not None and rng.random() < 0.5:
          example = preprocess.flip(example)
        return example
      return preprocess.load_example(element, self.opts, rng)
    except Exception as e:  # pylint: disable=broad-except
      # One bad file must never stop training.
      if not isinstance(e, preprocess.BadImageError):
        e = preprocess.BadImageError(f'{type(e).__name__}: {e}')
      reason = e.reason
      self.skipped[e.kind] += 1
      name = '<record>' if self.from_records else element
      if name not in self._warned:
        self._warned.add(name)
        logging.warning('Skipping %s: %s (%d skipped in this process so far)',
                        name, reason, sum(self.skipped.values()))
      return None


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in '
                     f'[0, {process_count})')
  return process_index, process_count


def _source_and_loader(config: ml_collections.ConfigDict, split: str):
  """(random-access source, loader) for a split of the configured data."""
  opts = preprocess.Options.from_config(config.data)
  prepared = config.data.prepared_dir
  cache = config.model.get('use_feature_cache', False)
  if cache:
    feature_cache.check_config(config)
  if prepared:
    if opts.random_crop:
      raise ValueError(
          'config.data.random_crop=True needs the on-the-fly path: prepared '
          'records hold centre crops. Unset config.data.prepared_dir or '
          'random_crop.')
    meta = sources.read_metadata(prepared)
    sources.check_metadata(meta, config.data, prepared)
    paths = sources.shard_paths(prepared, meta, split)
    source = sources.record_source(paths) if paths else []
    return source, _Loader(opts, from_records=True, keep_features=cache)
  return sources.split_files(config.data)[split], _Loader(opts, False)


def _read_options(num_workers: int, buffer_elements: int) -> grain.ReadOptions:
  # Reader threads per process; cv2 releases the GIL, so threads help even
  # without worker processes.
  threads = max(1, min(16, (os.cpu_count() or 1) // max(1, num_workers)))
  return grain.ReadOptions(num_threads=threads,
                           prefetch_buffer_size=max(1, buffer_elements))


def _mp_options(config) -> grain.MultiprocessingOptions:
  return grain.MultiprocessingOptions(
      num_workers=config.data.num_workers,
      per_worker_buffer_size=max(1, config.data.prefetch_buffer_size))


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Files (or prepared records) in `split` ('train' or 'val').

  Counted before unusable files are skipped.
  """
  if split not in sources.SPLITS:
    raise ValueError(f'split={split!r}; expected one of {sources.SPLITS}')
  if config.data.prepared_dir:
    meta = sources.read_metadata(config.data.prepared_dir)
    sources.check_metadata(meta, config.data, config.data.prepared_dir)
    return int(meta['splits'][split]['num_examples'])
  return len(sources.split_files(config.data)[split])


def build_train_dataset(config: ml_collections.ConfigDict, *,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None
                        ) -> grain.IterDataset:
  """Infinite, shuffled, sharded batches of this process's share.

  Each element is a dict of uint8 arrays with a leading batch dimension of
  `config.data.batch_size // process_count` (see the module docstring).
  """
  pi, pc = _process(process_index, process_count)
  batch = config.data.batch_size
  if batch <= 0 or batch % pc:
    raise ValueError(f'config.data.batch_size={batch} must be a positive '
                     f'multiple of the {pc} process(es)')
  per_process = batch // pc
  source, loader = _source_and_loader(config, 'train')
  if len(source) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError('the training split is empty')
  seed = config.seed % 2**32
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  if config.data.random_crop or config.data.random_flip:
    # Seeded by the global position, so the same on any process layout.
    ds = ds.random_map(loader, seed=seed)
  else:
    ds = ds.map(loader)
  ds = ds[pi::pc]
  workers = config.data.num_workers
  it = ds.to_iter_dataset(_read_options(
      workers, per_process * config.data.prefetch_buffer_size))
  it = it.batch(per_process, drop_remainder=True)
  if workers > 0:
    it = it.mp_prefetch(_mp_options(config), worker_init_fn=_worker_init)
  return it


def build_eval_dataset(config: ml_collections.ConfigDict, *,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       batch_size: Optional[int] = None) -> grain.IterDataset:
  """One ordered pass over this process's share of the validation split.

  No shuffling or augmentation; the last batch may be smaller. `batch_size`
  defaults to `config.data.eval_batch_size // process_count`. An empty
  split gives an empty dataset.
  """
  pi, pc = _process(process_index, process_count)
  if batch_size is None:
    batch_size = max(1, config.data.eval_batch_size // pc)
  source, loader = _source_and_loader(config, 'val')
  ds = grain.MapDataset.source(source)[pi::pc].map(loader)
  workers = config.data.num_workers
  it = ds.to_iter_dataset(_read_options(workers, batch_size))
  if workers > 0 and len(ds) > 0:  # pylint: disable=g-explicit-length-test
    # Workers hand back single examples; batching here keeps exactly one
    # partial batch at the end.
    it = it.mp_prefetch(_mp_options(config), worker_init_fn=_worker_init)
  return it.batch(batch_size, drop_remainder=False)
