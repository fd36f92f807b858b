"""--mode=prepare: decode and preprocess a photo folder once, into ArrayRecord.

Writes, under `config.data.prepared_dir`:
  train-00000-of-0000N.array_record ...   records of the train split
  val-00000-of-0000M.array_record ...     records of the val split
  metadata.json                           settings, counts, shard names
Record format: see `jaxcolor.data.sources`. Records hold the centre-crop
maps of `preprocess.load_example` (no random crop; random flips are applied
when reading). Training checks `metadata.json` against the config
(`sources.CHECKED_KEYS`) and refuses a mismatch.

Work is spread over `config.data.prepare_processes` processes (0: one per
CPU core); progress and a summary (written, skipped by reason) are logged.
Unusable files are skipped and listed, never fatal.
"""

import collections
import functools
import glob
import json
import multiprocessing
import os
import time
from typing import Any, Optional

from absl import logging
import ml_collections

from jaxcolor.data import preprocess
from jaxcolor.data import sources

_PROGRESS_SECONDS = 10.0


def _init_worker() -> None:
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(0)


def _encode_one(item: tuple[str, str], opts: preprocess.Options
                ) -> tuple[str, Optional[bytes], str]:
  """(path, name) -> (name, record bytes or None, skip reason)."""
  path, name = item
  try:
    example = preprocess.load_example(path, opts)
  except preprocess.BadImageError as e:
    return name, None, e.reason
  except Exception as e:  # pylint: disable=broad-except
    return name, None, f'{type(e).__name__}: {e}'
  return name, sources.encode_record(example, name), ''


def _claim_output_dir(out: str, overwrite: bool) -> None:
  """Creates `out`, or empties our files from it when overwriting."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f'config.data.prepared_dir={out!r} is a file')
  os.makedirs(out, exist_ok=True)
  if not os.listdir(out):
    return
  if not overwrite:
    raise ValueError(
        f'config.data.prepared_dir={out!r} is not empty; choose a new folder '
        'or set config.data.prepare_overwrite=True to replace its records')
  ours = [os.path.join(out, sources.METADATA_FILE)]
  for split in sources.SPLITS:
    ours += glob.glob(os.path.join(out, f'{split}-*-of-*.array_record'))
    ours += glob.glob(os.path.join(out, f'.{split}-*.tmp'))
  for path in ours:
    if os.path.isfile(path):
      os.remove(path)
  logging.info('prepare: removed the previous records in %s', out)


def _write_split(split: str, items: list[tuple[str, str]], out: str,
                 opts: preprocess.Options, shard_size: int,
                 pool: Any) -> dict[str, Any]:
  """Writes one split's shards; returns its metadata entry."""
  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module
  # pylint: enable=g-import-not-at-top
  encode = functools.partial(_encode_one, opts=opts)
  results = (pool.imap(encode, items, chunksize=8) if pool is not None
             else map(encode, items))
  skipped = collections.Counter()
  temp_paths, writer, in_shard, written = [], None, 0, 0
  start = last_log = time.time()
  try:
    for done, (name, record, reason) in enumerate(results, 1):
      if record is None:
        kind = preprocess.BadImageError(reason).kind
        skipped[kind] += 1
        logging.warning('prepare: skipping %s: %s', name, reason)
      else:
        if writer is None:
          temp_paths.append(os.path.join(out, f'.{split}-{len(temp_paths):05d}'
                                              '.tmp'))
          # group_size:1 keeps random access cheap for shuffled reads.
          writer = array_record_module.ArrayRecordWriter(temp_paths[-1],
                                                         'group_size:1')
        writer.write(record)
        in_shard += 1
        written += 1
        if in_shard == shard_size:
          writer.close()
          writer, in_shard = None, 0
      now = time.time()
      if now - last_log >= _PROGRESS_SECONDS or done == len(items):
        last_log = now
        logging.info('prepare %s: %d/%d files (%.0f%%), %.0f images/s, '
                     '%d skipped', split, done, len(items),
                     100.0 * done / max(1, len(items)),
                     done / max(now - start, 1e-9), sum(skipped.values()))
  finally:
    if writer is not None:
      writer.close()
  shards = []
  for i, temp in enumerate(temp_paths):
    shards.append(f'{split}-{i:05d}-of-{len(temp_paths):05d}.array_record')
    os.replace(temp, os.path.join(out, shards[-1]))
  return {'num_examples': written, 'num_files': len(items),
          'skipped': dict(sorted(skipped.items())), 'shards': shards}


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
  files = sources.split_files(data)  # bad folders fail here, before any work
  roots = {'train': data.train_dir, 'val': data.val_dir or data.train_dir}
  _claim_output_dir(out, data.prepare_overwrite)
  processes = data.prepare_processes or os.cpu_count() or 1
  logging.info('prepare: %d train + %d val files -> %s (%d processes)',
               len(files['train']), len(files['val']), out, processes)

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
                                   data.prepare_shard_size, pool)
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
                 'saliency': ['uint8', [size, size, 1]]},
      'source': {'train_dir': data.train_dir, 'val_dir': data.val_dir,
                 'val_fraction': data.val_fraction},
      'splits': splits,
  }
  temp = os.path.join(out, '.metadata.json.tmp')
  with open(temp, 'w') as f:
    json.dump(metadata, f, indent=2)
  os.replace(temp, os.path.join(out, sources.METADATA_FILE))
  for split, entry in splits.items():
    logging.info('prepare %s: wrote %d examples in %d shard(s); skipped %d%s',
                 split, entry['num_examples'], len(entry['shards']),
                 sum(entry['skipped'].values()),
                 f' {entry["skipped"]}' if entry['skipped'] else '')
  return metadata
