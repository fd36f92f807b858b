"""--mode=benchmark: throughput measurements.

`config.benchmark.what == 'input'`: images/s of the training input pipeline,
decoding the image folder on the fly and reading prepared ArrayRecord
shards, each with 0 and `config.data.num_workers` Grain workers, in one run.
Without `config.data.prepared_dir` the records are first prepared into a
temporary folder (deleted afterwards). Prints a table and writes JSON to
`config.benchmark.output_json` (default `<workdir>/benchmark_input.json`,
the current folder without a workdir). Does not import TensorFlow.
"""

import json
import os
import shutil
import tempfile
import time
from typing import Any, Optional

from absl import logging
import ml_collections

from jaxcolor.data import pipeline
from jaxcolor.data import prepare as prepare_lib


def _measure(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Times `num_batches` train batches after `warmup_batches`."""
  bench = config.benchmark
  it = iter(pipeline.build_train_dataset(config, process_index=0,
                                         process_count=1))
  try:
    start = time.perf_counter()
    for _ in range(bench.warmup_batches):
      next(it)
    warm = time.perf_counter()
    images = 0
    for _ in range(bench.num_batches):
      images += next(iter(next(it).values())).shape[0]
    end = time.perf_counter()
  finally:
    it.close()
  seconds = end - warm
  return {'images_per_s': images / seconds,
          'ms_per_batch': 1000.0 * seconds / max(1, bench.num_batches),
          'warmup_s': warm - start, 'images': images}


def run_input(config: ml_collections.ConfigDict,
              workdir: Optional[str]) -> dict[str, Any]:
  """Measures the input pipeline; prints a table and writes the JSON."""
  config = config.copy_and_resolve_references()
  bench = config.benchmark
  if bench.num_batches <= 0 or bench.warmup_batches < 0:
    raise ValueError('config.benchmark.num_batches must be positive and '
                     'warmup_batches non-negative')
  data = config.data
  if not data.train_dir and not data.prepared_dir:
    raise ValueError('set config.data.train_dir (and/or prepared_dir) to the '
                     'photos to read')
  worker_counts = sorted({0, int(data.num_workers)})
  temp_dir, notes, prepare_s = None, [], None
  prepared_dir = data.prepared_dir
  if not prepared_dir:
    temp_dir = tempfile.mkdtemp(prefix='jaxcolor-bench-')
    prepared_dir = os.path.join(temp_dir, 'records')
    msg = ('config.data.prepared_dir is not set: preparing records from '
           f'{data.train_dir} into a temporary folder first ({prepared_dir})')
    print(msg, flush=True)
    notes.append('records prepared into a temporary folder for this run')
    prep = config.copy_and_resolve_references()
    prep.data.prepared_dir = prepared_dir
    t = time.perf_counter()
    prepare_lib.prepare(prep)
    prepare_s = time.perf_counter() - t

  results = []
  try:
    paths = [('records', prepared_dir)]
    if data.train_dir:
      paths.insert(0, ('folder', ''))
    else:
      notes.append('no config.data.train_dir: folder path not measured')
    for name, records in paths:
      for workers in worker_counts:
        cfg = config.copy_and_resolve_references()
        cfg.data.prepared_dir = records
        cfg.data.num_workers = workers
        logging.info('benchmark: %s, %d workers', name, workers)
        row = {'path': name, 'num_workers': workers, **_measure(cfg)}
        results.append(row)
  finally:
    if temp_dir:
      shutil.rmtree(temp_dir, ignore_errors=True)

  report = {
      'what': 'input',
      'image_size': data.image_size,
      'batch_size': data.batch_size,
      'num_batches': bench.num_batches,
      'warmup_batches': bench.warmup_batches,
      'train_dir': data.train_dir,
      'cpu_count': os.cpu_count(),
      'prepare_s': prepare_s,
      'notes': notes,
      'results': results,
  }
  header = (f'{"path":<8} {"workers":>7} {"images/s":>10} {"ms/batch":>9} '
            f'{"warm-up s":>9}')
  lines = [f'Input pipeline, {data.image_size} px, batch {data.batch_size}, '
           f'{bench.num_batches} batches after {bench.warmup_batches} warm-up',
           header, '-' * len(header)]
  for r in results:
    lines.append(f'{r["path"]:<8} {r["num_workers"]:>7d} '
                 f'{r["images_per_s"]:>10.1f} {r["ms_per_batch"]:>9.1f} '
                 f'{r["warmup_s"]:>9.2f}')
  print('\n'.join(lines), flush=True)
  out = bench.output_json or os.path.join(workdir or os.getcwd(),
                                          'benchmark_input.json')
  if os.path.dirname(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'Wrote {out}', flush=True)
  return report


def run(config: ml_collections.ConfigDict, workdir: Optional[str]) -> Any:
  """Runs the benchmark named by `config.benchmark.what`."""
  what = config.benchmark.what
  if what == 'input':
    return run_input(config, workdir)
  raise ValueError(f"config.benchmark.what={what!r}; supported: 'input'")
