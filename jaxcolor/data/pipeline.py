"""Grain input pipelines: shuffled, sharded, batched examples for training.

`Data.create(config)` resolves the configured source once per run (one walk
of an image folder, one check of the records' metadata) and hands out the
training iterator and the evaluation batches, as often as asked, without
resolving again. The module-level `build_train_dataset`,
`build_eval_dataset` and `num_examples` are one-off shortcuts that resolve
anew.

Training order. All processes see the same global sequence: the split's
examples shuffled with `config.seed`, then again for every further epoch
(Grain folds the epoch into the shuffle seed), repeated forever. Process `p`
of `n` takes positions p, p + n, p + 2n, ... of that sequence, so shards are
disjoint and, together, cover every epoch. Each process then batches its
own stream (`batch_size // n` per process, remainders dropped) in
`num_workers` worker processes. Everything is a pure function of the index,
so `iter(ds).get_state()` / `set_state()` (and orbax via
`grain.checkpoint.CheckpointSave/Restore`) resume at exactly the next batch.

Files that cannot be used (see preprocess.read_file and decode_image: not
a regular file, too large, not decodable) and prepared records that cannot
be (a damaged chunk of a shard, arrays that differ from metadata.json; see
sources.RecordSplit) become None and are dropped; a WARNING names the file,
or the shard and the record's position, and the reason, the first time each
is met in a process, with that process's running count. A resumed run skips
them again, never stops at them. Batches are dicts of
uint8 numpy arrays (in this process's own memory, never Grain's shared
memory): 'rgb' (B, S, S, 3) and 'gray', 'edge', 'saliency'
(B, S, S, 1); the trainer applies `preprocess.normalize` on device. With
`config.data.use_feature_cache`, batches also hold the records' cached
'resnet_features' (B, f, f, 512) in the cache dtype; otherwise that key is
dropped, so records with features serve any config.
"""

import collections
import dataclasses
import os
from typing import Any, Iterator, Optional

from absl import logging
import grain
import ml_collections
import numpy as np

from jaxcolor.data import feature_cache
from jaxcolor.data import preprocess
from jaxcolor.data import sources


def _worker_init(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(0)  # no OpenCV thread pool inside Grain workers


class Loader:
  """Split element -> example dict, or None when unusable.

  Called as `loader(element)` or, for augmentation, `loader(element, rng)`.
  `skipped` counts the skips of this process by reason.
  """

  def __init__(self, split: sources.Split, opts: preprocess.Options):
    self.split = split
    self.opts = opts
    self.skipped = collections.Counter()
    self._warned = set()

  def __call__(self, element: Any,
               rng: Optional[np.random.Generator] = None) -> Optional[dict]:
    try:
      return self.split.load(element, self.opts, rng)
    except Exception as e:  # pylint: disable=broad-except
      # One bad file must never stop training.
      if not isinstance(e, preprocess.BadImageError):
        e = preprocess.BadImageError(f'{type(e).__name__}: {e}')
      self.skipped[e.kind] += 1
      name = self.split.describe(element)
      if name not in self._warned:
        self._warned.add(name)
        logging.warning('Skipping %s: %s (%d skipped in this process so far)',
                        name, e.reason, sum(self.skipped.values()))
      return None

  def summary(self) -> str:
    """The skips by reason, most first: '2 not a decodable image, 1 not a
    regular file' ('' for none)."""
    return ', '.join(f'{n} {kind}' for kind, n in
                     sorted(self.skipped.items(), key=lambda x: (-x[1], x[0])))


def _own_memory(batch: dict) -> dict:
  """A batch from Grain's worker processes, copied out of shared memory.

  Grain hands worker batches over as shared-memory arrays that are unlinked
  only when the array is garbage collected. Arrays still alive when the
  process ends (a batch the JAX CPU backend aliases without copying, the
  last batches of a run) are never unlinked, and Python's resource tracker
  reports them as leaked at shutdown. Copied here, each shared block is
  released as soon as its batch arrives.
  """
  return {k: np.array(v) if isinstance(v, np.ndarray) else v
          for k, v in batch.items()}


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


@dataclasses.dataclass(frozen=True)
class Data:
  """The run's data, resolved once.

  Attributes:
    config: the run's config (its `data` section is read).
    resolved: every split's source, count and the records' checked metadata.
    process_index, process_count: this process's share (see module doc).
    feature_entry: the records' cached-feature entry (see
      `feature_cache`) with config.data.use_feature_cache, else None.
  """
  config: ml_collections.ConfigDict
  resolved: sources.Resolved
  process_index: int
  process_count: int
  feature_entry: Optional[dict] = None

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, *,
             process_index: Optional[int] = None,
             process_count: Optional[int] = None) -> 'Data':
    """Resolves config.data (see `sources.resolve`); raises ValueError /
    FileNotFoundError for data that cannot be used, before any work."""
    pi, pc = _process(process_index, process_count)
    data = config.data
    cache = bool(data.get('use_feature_cache', False))
    if cache:
      feature_cache.check_config(config)
    if data.prepared_dir and data.random_crop:
      raise ValueError(
          'config.data.random_crop=True needs the on-the-fly path: prepared '
          'records hold centre crops. Unset config.data.prepared_dir or '
          'random_crop.')
    resolved = sources.resolve(data, keep=(feature_cache.KEY,) if cache else (),
                               optional=(feature_cache.KEY,))
    entry = feature_cache.entry(config, resolved.metadata) if cache else None
    return cls(config=config, resolved=resolved, process_index=pi,
               process_count=pc, feature_entry=entry)

  @property
  def metadata(self) -> Optional[dict]:
    return self.resolved.metadata

  def split(self, name: str) -> sources.Split:
    if name not in sources.SPLITS:
      raise ValueError(f'split={name!r}; expected one of {sources.SPLITS}')
    return self.resolved.splits[name]

  def num_examples(self, split: str) -> int:
    """Files (or prepared records) in `split`, before unusable files are
    skipped."""
    return self.split(split).num_examples

  def loader(self, split: str) -> tuple[sources.Split, 'Loader']:
    """`split` and a fresh loader of its elements (skips counted apart)."""
    s = self.split(split)
    return s, Loader(s, preprocess.Options.from_config(self.config.data))

  # ------------------------------------------------------------ training
  def check_usable(self, split: str = 'train') -> None:
    """Raises ValueError unless some example of `split` can be read.

    Reads in order until the first usable example (at once for usable
    data), so a folder of only broken files is refused before training
    instead of being skipped forever.
    """
    s, loader = self.loader(split)
    source = s.source
    for i in range(len(source)):
      if loader(source[i]) is not None:
        return
    reasons = loader.summary()
    raise ValueError(
        f'no usable {split} image among the {len(source)} '
        f'{"file" if s.kind == "folder" else "record"}(s) of the {split} '
        f'split ({reasons or "none"}); see the warnings above for each file')

  def train_dataset(self) -> grain.IterDataset:
    """Infinite, shuffled, sharded batches of this process's share.

    Each element is a dict of uint8 arrays with a leading batch dimension of
    `config.data.batch_size // process_count` (see the module docstring).
    """
    config, pi, pc = self.config, self.process_index, self.process_count
    batch = config.data.batch_size
    if batch <= 0 or batch % pc:
      raise ValueError(f'config.data.batch_size={batch} must be a positive '
                       f'multiple of the {pc} process(es)')
    per_process = batch // pc
    split, loader = self.loader('train')
    source = split.source
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
      it = it.map(_own_memory)
    return it

  def one_epoch(self) -> Iterator[dict]:
    """About one epoch of training batches (at least one), for passes over
    the training set such as a class prior."""
    it = iter(self.train_dataset())
    n = self.num_examples('train') // self.config.data.batch_size
    return (next(it) for _ in range(max(1, n)))

  # ------------------------------------------------------------ evaluation
  def eval_dataset(self, batch_size: Optional[int] = None
                   ) -> grain.IterDataset:
    """One ordered pass over this process's share of the validation split.

    No shuffling or augmentation; the last batch may be smaller.
    `batch_size` defaults to `config.data.eval_batch_size // process_count`.
    An empty split gives an empty dataset. Read by threads in this process
    (no worker processes to start at every evaluation).
    """
    pc = self.process_count
    if batch_size is None:
      batch_size = max(1, self.config.data.eval_batch_size // pc)
    split, loader = self.loader('val')
    ds = grain.MapDataset.source(split.source)[self.process_index::pc]
    ds = ds.map(loader)
    it = ds.to_iter_dataset(_read_options(0, batch_size))
    return it.batch(batch_size, drop_remainder=False)

  def eval_batches(self) -> Iterator[dict]:
    """Padded, masked eval batches; the same count on every process.

    Each batch has `eval_batch_size // process_count` rows and a 'mask'
    (B,) bool, True for real examples. `config.num_eval_batches > 0` caps
    the count. Call again for another pass.
    """
    config = self.config
    per_process = config.data.eval_batch_size // self.process_count
    total = self.num_examples('val')
    n_batches = -(-total // config.data.eval_batch_size)
    if config.num_eval_batches > 0:
      n_batches = min(n_batches, config.num_eval_batches)
    it = iter(self.eval_dataset(per_process))
    template = None
    for _ in range(n_batches):
      batch = next(it, None)
      if batch is not None and template is None:
        template = batch
      if batch is None:
        if template is None:
          return
        batch = {k: np.zeros_like(v[:0]) for k, v in template.items()}
      n = next(iter(batch.values())).shape[0]
      pad = per_process - n
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
      batch['mask'] = np.arange(per_process) < n
      yield batch


# ---------------------------------------------------------------- shortcuts
def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Files (or prepared records) in `split` ('train' or 'val')."""
  return Data.create(config, process_index=0,
                     process_count=1).num_examples(split)


def build_train_dataset(config: ml_collections.ConfigDict, *,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None
                        ) -> grain.IterDataset:
  """`Data.create(config, ...).train_dataset()`."""
  return Data.create(config, process_index=process_index,
                     process_count=process_count).train_dataset()


def build_eval_dataset(config: ml_collections.ConfigDict, *,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       batch_size: Optional[int] = None) -> grain.IterDataset:
  """`Data.create(config, ...).eval_dataset(batch_size)`."""
  return Data.create(config, process_index=process_index,
                     process_count=process_count).eval_dataset(batch_size)
