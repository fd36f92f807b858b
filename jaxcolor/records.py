"""Prepared records: a photo folder decoded and preprocessed once, into
ArrayRecord shards (`--mode=prepare`; benchmark's records too).

Writes, under `config.data.prepared_dir`:
  train-00000-of-0000N.array_record ...   records of the train split
  val-00000-of-0000M.array_record ...     records of the val split
  metadata.json                           settings, counts, shard names
Record format: see `jaxcolor.data.sources`. Records hold the centre-crop
maps of `preprocess.load_example` (no random crop; random flips are applied
when reading). Training checks `metadata.json` against the config
(`sources.CHECKED_KEYS`) and refuses a mismatch.

With `config.data.use_feature_cache=True` the records also hold the model
family's cached features (the GAN's frozen ResNet fusion features,
'resnet_features', see `jaxcolor.data.feature_cache`), computed in batches
on the JAX device of this process by the family's featurizer, and the
metadata says how they were made. (This mode sits beside the other modes,
not in `jaxcolor.data`, because it runs a model.)

Work is spread over `config.data.prepare_processes` processes (0: one per
CPU core) that decode and preprocess; JAX runs in the parent only. Progress
and a summary (written, skipped by reason) are logged. Unusable files are
skipped and listed, never fatal.
"""

import collections
import functools
import glob
import multiprocessing
import os
import time
from typing import Any, Optional

from absl import logging
import ml_collections

from jaxcolor import families
from jaxcolor.data import feature_cache
from jaxcolor.data import preprocess
from jaxcolor.data import sources
from jaxcolor.runtime import files as files_lib
from jaxcolor.runtime import folder_lock

_PROGRESS_SECONDS = 10.0


def _init_worker() -> None:
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(0)


def _load_one(item: tuple[str, str], opts: preprocess.Options
              ) -> tuple[str, Optional[dict[str, Any]], str]:
  """(path, name) -> (name, example or None, skip reason)."""
  path, name = item
  try:
    return name, preprocess.load_example(path, opts), ''
  except preprocess.BadImageError as e:
    return name, None, e.reason
  except Exception as e:  # pylint: disable=broad-except
    return name, None, f'{type(e).__name__}: {e}'


def _holds_files(folder: str) -> bool:
  """True when `folder` exists and holds anything but hidden files."""
  return os.path.isdir(folder) and any(not n.startswith('.')
                                       for n in os.listdir(folder))


def _claim_output_dir(out: str, overwrite: bool) -> None:
  """Makes `out` ready for this run (which holds its lock): removes what a
  killed run left unfinished, and our records too when overwriting."""
  left = []
  for split in sources.SPLITS:
    left += glob.glob(os.path.join(out, f'.{split}-*.tmp'))
  for path in left:
    os.remove(path)
  if left:
    logging.warning('prepare: removed %d unfinished shard(s) left in %s by '
                    'an interrupted run', len(left), out)
  if not overwrite or not _holds_files(out):
    return
  ours = [os.path.join(out, sources.METADATA_FILE)]
  for split in sources.SPLITS:
    ours += glob.glob(os.path.join(out, f'{split}-*-of-*.array_record'))
  for path in ours:
    if os.path.isfile(path):
      os.remove(path)
  logging.info('prepare: removed the previous records in %s', out)


class _ShardWriter:
  """Writes a split's records into temporary shards; `finish` renames them."""

  def __init__(self, out: str, split: str, shard_size: int):
    # pylint: disable-next=g-import-not-at-top
    from array_record.python import array_record_module
    self._writer_class = array_record_module.ArrayRecordWriter
    self.out, self.split, self.shard_size = out, split, shard_size
    self.temp_paths, self.writer, self.in_shard, self.written = [], None, 0, 0

  def write(self, record: bytes) -> None:
    if self.writer is None:
      self.temp_paths.append(os.path.join(
          self.out, f'.{self.split}-{len(self.temp_paths):05d}.tmp'))
      # group_size:1 keeps random access cheap for shuffled reads.
      self.writer = self._writer_class(self.temp_paths[-1], 'group_size:1')
    self.writer.write(record)
    self.in_shard += 1
    self.written += 1
    if self.in_shard == self.shard_size:
      self.close()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer, self.in_shard = None, 0

  def finish(self) -> list[str]:
    """Closes and renames the shards; returns their names."""
    self.close()
    shards = []
    for i, temp in enumerate(self.temp_paths):
      shards.append(f'{self.split}-{i:05d}-of-{len(self.temp_paths):05d}'
                    '.array_record')
      os.replace(temp, os.path.join(self.out, shards[-1]))
    return shards


def _write_split(split: str, items: list[tuple[str, str]], out: str,
                 opts: preprocess.Options, shard_size: int, pool: Any,
                 featurizer: Optional[Any] = None) -> dict[str, Any]:
  """Writes one split's shards; returns its metadata entry.

  `featurizer` (the family's, see `Family.featurizer`) adds the cached
  features.
  """
  load = functools.partial(_load_one, opts=opts)
  results = (pool.imap(load, items, chunksize=8) if pool is not None
             else map(load, items))
  skipped = collections.Counter()
  writer = _ShardWriter(out, split, shard_size)
  start = last_log = time.time()
  try:
    for done, (name, example, reason) in enumerate(results, 1):
      if example is None:
        kind = preprocess.BadImageError(reason).kind
        skipped[kind] += 1
        logging.warning('prepare: skipping %s: %s', name, reason)
      else:
        ready = ([(name, example)] if featurizer is None
                 else featurizer.add(name, example))
        for n, e in ready:
          writer.write(sources.encode_record(e, n))
      now = time.time()
      if now - last_log >= _PROGRESS_SECONDS or done == len(items):
        last_log = now
        logging.info('prepare %s: %d/%d files (%.0f%%), %.0f images/s, '
                     '%d skipped', split, done, len(items),
                     100.0 * done / max(1, len(items)),
                     done / max(now - start, 1e-9), sum(skipped.values()))
    if featurizer is not None:
      for n, e in featurizer.finish():
        writer.write(sources.encode_record(e, n))
  finally:
    writer.close()
  return {'num_examples': writer.written, 'num_files': len(items),
          'skipped': dict(sorted(skipped.items())), 'shards': writer.finish()}


def prepare(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Writes the prepared records of `config.data`; returns the metadata."""
  data = config.data
  out = data.prepared_dir
  if not out:
    raise ValueError('config.data.prepared_dir is empty; set it to the folder '
                     'the records should go to')
  opts = preprocess.Options.from_config(data)
  if data.prepare_shard_size <= 0:
    raise ValueError('config.data.prepare_shard_size must be positive, got '
                     f'{data.prepare_shard_size}')
  cache = data.use_feature_cache
  family = families.build(config) if cache else None
  files = sources.split_files(data)  # bad folders fail here, before any work
  roots = {'train': data.train_dir, 'val': data.val_dir or data.train_dir}
  # Model weights load (or fail) before anything is written.
  featurizer = family.featurizer() if cache else None
  if not data.prepare_overwrite and _holds_files(out):
    raise ValueError(  # refused before the folder is touched
        f'config.data.prepared_dir={out!r} is not empty; choose a new folder '
        'or set config.data.prepare_overwrite=True to replace its records')
  with folder_lock.output_folder(out, 'prepare run',
                                 'config.data.prepared_dir'):
    _claim_output_dir(out, data.prepare_overwrite)
    return _prepare(config, out, opts, family, files, roots, featurizer)


def _prepare(config, out, opts, family, files, roots, featurizer
             ) -> dict[str, Any]:
  """`prepare` once `out` is held and empty."""
  data = config.data
  cache = data.use_feature_cache
  processes = data.prepare_processes or os.cpu_count() or 1
  logging.info('prepare: %d train + %d val files -> %s (%d processes%s)',
               len(files['train']), len(files['val']), out, processes,
               ', with ResNet features' if cache else '')

  pool = None
  if processes > 1:
    pool = multiprocessing.get_context('spawn').Pool(
        processes, initializer=_init_worker)
  try:
    splits = {}
    for split in sources.SPLITS:
      items = [(p, os.path.relpath(p, roots[split]).replace(os.sep, '/'))
               for p in files[split]]
      splits[split] = _write_split(split, items, out, opts,
                                   data.prepare_shard_size, pool, featurizer)
  finally:
    if pool is not None:
      pool.close()
      pool.join()

  size = opts.image_size
  metadata = {
      'format': sources.FORMAT_NAME,
      'format_version': sources.FORMAT_VERSION,
      'image_size': size,
      'canny_low': opts.canny_low,
      'canny_high': opts.canny_high,
      'saliency': opts.saliency,
      'crop': 'centre',
      'arrays': {'rgb': ['uint8', [size, size, 3]],
                 'gray': ['uint8', [size, size, 1]],
                 'edge': ['uint8', [size, size, 1]],
                 'saliency': ['uint8', [size, size, 1]],
                 **({feature_cache.KEY: [data.feature_cache_dtype,
                                         list(family.feature_shape())]}
                    if cache else {})},
      **({feature_cache.KEY: featurizer.metadata} if cache else {}),
      'source': {'train_dir': data.train_dir, 'val_dir': data.val_dir,
                 'val_fraction': data.val_fraction},
      'splits': splits,
  }
  files_lib.write_json(os.path.join(out, sources.METADATA_FILE), metadata,
                       indent=2)
  for split, entry in splits.items():
    logging.info('prepare %s: wrote %d examples in %d shard(s); skipped %d%s',
                 split, entry['num_examples'], len(entry['shards']),
                 sum(entry['skipped'].values()),
                 f' {entry["skipped"]}' if entry['skipped'] else '')
  return metadata
