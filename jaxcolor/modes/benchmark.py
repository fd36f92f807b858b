"""--mode=benchmark: compile time, step time, throughput, FLOPs and MFU.

`config.benchmark.what` picks the measurement; each runs alone:

- 'step' (default): the trainer's compiled step on synthetic batches that
  stay on the devices (compute-bound). Compile time (ahead of time,
  `lower().compile()`), then `warmup_steps` untimed and `num_steps` timed
  calls, each blocking on the new state and metrics.
- 'e2e': the same step fed by the real Grain pipeline, from the image folder
  (`config.data.train_dir`) and from prepared ArrayRecord shards; a timed
  call includes fetching the host batches and putting them on the devices.
- 'input': images/s of the input pipeline alone, from the folder and the
  records, each with 0 and `config.data.num_workers` Grain workers
  (`num_batches` timed after `warmup_batches`).
- 'all': the three above in turn, in one JSON, plus input images/s over the
  synthetic step's images/s (>= 1: the pipeline keeps up).

Without `config.data.prepared_dir` the records are first prepared into a
temporary folder (deleted afterwards). One timed call runs
`config.steps_per_call` train steps. FLOPs come from XLA's cost analysis of
the compiled step (per device, times the device count); MFU divides the
achieved FLOP/s by the peak of all devices: `config.benchmark.peak_tflops`
per device, or else the table below keyed by the device kind and dtype.

Prints a table and writes JSON to `config.benchmark.output_json` (default
`<workdir>/benchmark_<what>.json`, the current folder without a workdir).
With `config.profile_steps` (start, count), the step section's timed calls
start..start+count-1 are traced with `jax.profiler` into `<workdir>/profile/`
(`./profile/` without a workdir); the notes say where. Does not import
TensorFlow.
"""

import contextlib
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np

from jaxcolor import families
from jaxcolor import models as models_lib
from jaxcolor.runtime import files
from jaxcolor.runtime import op_profile
from jaxcolor.runtime import parallel
from jaxcolor.runtime import profiler
from jaxcolor.runtime import xla_flags
from jaxcolor import records as records_lib
from jaxcolor import trainer as trainer_lib
from jaxcolor.data import feature_cache
from jaxcolor.data import pipeline

WHATS = ('step', 'e2e', 'input', 'all')

# Dense peak TFLOP/s per chip: (device_kind pattern, bfloat16, TensorFloat-32,
# float32). Matched in order against `jax.devices()[0].device_kind`. XLA runs
# float32 matmuls and convolutions at the default precision as TF32 on
# NVIDIA GPUs since Ampere and as one bfloat16 pass on TPUs, so float32
# configs are measured against the TF32 column unless
# `jax_default_matmul_precision` asks for full float32.
PEAK_TFLOPS = (
    (r'H200', 989.0, 495.0, 67.0),
    (r'H100.*PCIe', 756.0, 378.0, 51.0),
    (r'H100', 989.0, 495.0, 67.0),
    (r'A100', 312.0, 156.0, 19.5),
    (r'\bL4\b', 121.0, 60.0, 30.0),
    (r'TPU v4', 275.0, 275.0, None),
    (r'TPU v5 ?lite|TPU v5e', 197.0, 197.0, None),
    (r'TPU v5', 459.0, 459.0, None),
    (r'TPU v6', 918.0, 918.0, None),
)
_FULL_FP32 = ('highest', 'float32', 'f32_f32_f32')

# Top-level copies of the headline section's figures.
HEADLINE_KEYS = (
    'compile_s', 'step_s_median', 'step_s_min', 'step_s_max', 'step_s_p10',
    'step_s_p90', 'step_s_std', 'train_step_s', 'images_per_s',
    'images_per_s_per_device', 'flops_per_call', 'flops_per_step',
    'flops_per_image', 'achieved_tflops', 'mfu')


# ------------------------------------------------------------------ helpers
def peak_tflops(device_kind: str, dtype: str,
                matmul_precision: Optional[str] = None
                ) -> tuple[Optional[float], str]:
  """(Dense peak TFLOP/s of one chip or None, what it is) from the table."""
  full = str(matmul_precision or '').lower() in _FULL_FP32
  column, name = ((1, 'bfloat16') if dtype == 'bfloat16' else
                  (3, 'float32') if full else
                  (2, 'float32 at default matmul precision'))
  for row in PEAK_TFLOPS:
    if re.search(row[0], device_kind):
      if row[column] is None:
        break
      return row[column], f'table: {device_kind}, {name}'
  return None, (f'no table entry for {device_kind!r} ({name}); set '
                'config.benchmark.peak_tflops for MFU')


def synthetic_batch(config: ml_collections.ConfigDict,
                    rng: np.random.Generator,
                    batch_size: int) -> dict[str, np.ndarray]:
  """Random host batch with the pipeline's keys, shapes and dtypes.

  uint8 'rgb' (B,S,S,3), 'gray', 'edge' (0 or 255), 'saliency' (B,S,S,1);
  with `config.data.use_feature_cache` also 'resnet_features'
  of the family's `feature_shape()`, in `config.data.feature_cache_dtype`.
  """
  s = config.data.image_size
  batch = {
      'rgb': rng.integers(0, 256, (batch_size, s, s, 3), np.uint8),
      'gray': rng.integers(0, 256, (batch_size, s, s, 1), np.uint8),
      'edge': (rng.random((batch_size, s, s, 1)) < 0.1).astype(np.uint8) * 255,
      'saliency': rng.integers(0, 256, (batch_size, s, s, 1), np.uint8),
  }
  data = config.data
  if data.use_feature_cache:
    shape = families.build(config).feature_shape()
    feats = np.abs(rng.standard_normal((batch_size, *shape)))
    batch[feature_cache.KEY] = feats.astype(jnp.dtype(data.feature_cache_dtype))
  return batch


def time_stats(seconds: list[float], prefix: str = 'step_s') -> dict:
  """Median, min, max, 10th/90th percentiles and std of call times (s)."""
  t = np.asarray(seconds, np.float64)
  return {f'{prefix}_median': float(np.median(t)),
          f'{prefix}_min': float(t.min()), f'{prefix}_max': float(t.max()),
          f'{prefix}_p10': float(np.percentile(t, 10)),
          f'{prefix}_p90': float(np.percentile(t, 90)),
          f'{prefix}_std': float(t.std())}


def xla_cost(compiled: Any, steps_per_call: int = 1) -> dict[str, float]:
  """XLA's 'flops' and 'bytes accessed' of one device's call (or {}).

  XLA's cost analysis counts a loop body once, whatever its trip count: when
  the module runs its `steps_per_call` steps in a while loop of that known
  trip count, the figures are multiplied by it.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('cost_analysis failed: %s', e)
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  cost = dict(cost or {})
  loops = 1
  if steps_per_call > 1:
    try:
      text = compiled.as_text() or ''
    except Exception:  # pylint: disable=broad-except
      text = ''
    counts = re.findall(r'"known_trip_count":\{"n":"(\d+)"\}', text)
    loops = steps_per_call if str(steps_per_call) in counts else 1
  return {k: float(cost[k]) * loops for k in ('flops', 'bytes accessed')
          if cost.get(k)}


def _device_memory(compiled: Any) -> Optional[int]:
  """Bytes of arguments + outputs + temporaries - aliased, per device."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes +
               m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


# ------------------------------------------------------------------ the step
class StepTrainer:
  """The trainer's state on the devices and its compiled step
  (`compiler_options`: XLA options for that compile, e.g. from
  benchmarks/paired_step.py)."""

  def __init__(self, config: ml_collections.ConfigDict,
               compiler_options: Optional[dict] = None):
    self.config = config
    self.compiler_options = compiler_options or None
    self.k = config.steps_per_call
    t = time.perf_counter()
    self.family = families.build(config)
    self.par = parallel.Parallel.create(config.parallel)
    data = None
    if config.data.train_dir or config.data.prepared_dir:
      data = pipeline.Data.create(config)  # for families whose init reads it
    state = trainer_lib.init_state(self.family, self.par, config, data)
    self.parameters = self.family.parameter_counts(state)
    self.state = self.par.to_step_layout(state)
    jax.block_until_ready(self.state)
    self.init_s = time.perf_counter() - t
    self.fn = trainer_lib.make_train_fn(self.family, self.par, config)
    self._compiled = {}
    self.metrics = None

  def compile(self, batch) -> tuple[Callable, dict, bool]:
    """(compiled step for batch's shapes, its facts, newly compiled)."""
    leaves, tree = jax.tree.flatten(batch)
    key = (tree, tuple((x.shape, str(x.dtype)) for x in leaves))
    if key in self._compiled:
      return (*self._compiled[key], False)
    t = time.perf_counter()
    compiled = self.fn.lower(self.state, batch).compile(
        compiler_options=self.compiler_options)
    info = {'compile_s': time.perf_counter() - t}
    cost = xla_cost(compiled, self.k)
    n = jax.device_count()  # the cost is one device's
    info['flops_per_call'] = cost.get('flops', 0.0) * n or None
    info['bytes_accessed_per_call'] = (
        cost.get('bytes accessed', 0.0) * n or None)
    info['device_memory_bytes'] = _device_memory(compiled)
    self._compiled[key] = (compiled, info)
    return compiled, info, True

  def put(self, host_batches: list[dict]) -> Any:
    """steps_per_call host batches -> the compiled step's device batch."""
    return trainer_lib.put_train_batches(self.par, host_batches, self.config)

  def call(self, batch) -> None:
    """One compiled call on a device batch, blocking on state and metrics."""
    compiled, _, _ = self.compile(batch)
    self.state, self.metrics = compiled(self.state, batch)
    jax.block_until_ready((self.state, self.metrics))

  def metrics_finite(self) -> bool:
    """Whether the last call's losses and norms are all finite."""
    m = self.par.fetch(self.metrics)
    return bool(all(np.all(np.isfinite(v)) for v in jax.tree.leaves(m)))


def _throughput(info: dict, seconds: list[float], config,
                peak: Optional[float]) -> dict:
  """Times, images/s, FLOPs per call/step/image, TFLOP/s and MFU."""
  k = config.steps_per_call
  images = config.data.batch_size * k
  stats = time_stats(seconds)
  med = stats['step_s_median']
  devices = jax.device_count()
  row = {**stats, 'train_step_s': med / k, 'images_per_s': images / med,
         'images_per_s_per_device': images / med / devices}
  flops = info.get('flops_per_call')
  row['flops_per_call'] = flops
  row['flops_per_step'] = flops / k if flops else None
  row['flops_per_image'] = flops / images if flops else None
  row['achieved_tflops'] = flops / med / 1e12 if flops else None
  row['mfu'] = (row['achieved_tflops'] / (peak * devices)
                if flops and peak else None)
  return row


def _time_calls(n: int, call: Callable[[], Any],
                trace: Optional[profiler.StepTrace] = None) -> list[float]:
  """Seconds of each of n calls (each call blocks on its results).

  `trace` starts and stops around calls 1..n, outside their timing.
  """
  seconds = []
  try:
    for i in range(1, n + 1):
      if trace is not None:
        trace.step_begins(i)
      t = time.perf_counter()
      call()
      seconds.append(time.perf_counter() - t)
      if trace is not None:
        trace.step_done(i)
  finally:
    if trace is not None:
      trace.close()
  return seconds


def synthetic_call_batch(trainer: StepTrainer, config,
                         rng: np.random.Generator, per_process: int) -> Any:
  """One compiled call's device batch of synthetic images (`trainer.k`
  steps of `per_process` images each)."""
  return trainer.put([synthetic_batch(config, rng, per_process)
                      for _ in range(trainer.k)])


def _step_section(trainer: StepTrainer, config, peak, profile_dir: str,
                  notes: list[str]) -> dict:
  """The compiled step on synthetic, device-resident batches; with
  `config.profile_steps` (start, count), timed calls start..start+count-1
  are traced into `profile_dir`."""
  bench = config.benchmark
  per_process = config.data.batch_size // jax.process_count()
  rng = np.random.default_rng(config.seed + jax.process_index())
  batch = synthetic_call_batch(trainer, config, rng, per_process)
  _, info, _ = trainer.compile(batch)
  fit = _memory_fit(trainer, config, rng, notes)
  if info['device_memory_bytes']:
    per_device = config.data.batch_size // jax.device_count()
    fit['device_memory_per_image_bytes'] = (info['device_memory_bytes']
                                            / per_device)
  t = time.perf_counter()
  for _ in range(bench.warmup_steps):
    trainer.call(batch)
  warmup_s = time.perf_counter() - t
  trace = profiler.StepTrace(
      config.get('profile_steps', ()), profile_dir, what='timed calls',
      run=range(1, bench.num_steps + 1))
  seconds = _time_calls(bench.num_steps, lambda: trainer.call(batch), trace)
  section = {'data': 'synthetic, on the devices', **info, **fit,
             'warmup_s': warmup_s, **_throughput(info, seconds, config, peak),
             'metrics_finite': trainer.metrics_finite()}
  if trace.folder:
    notes.append('step: timed calls %d..%d traced by jax.profiler into %s '
                 '(their times include its overhead)'
                 % (*trace.traced, trace.folder))
    section['ops'] = _op_summary(trainer, batch, trace, notes)
  return section


def _op_summary(trainer: StepTrainer, batch, trace: profiler.StepTrace,
                notes: list[str]) -> Optional[dict]:
  """Where the traced calls' time went, by XLA op (op_profile), or None
  with a note when the trace cannot be read. The step's HLO goes beside
  the trace (`step.hlo.txt`), for `benchmarks/op_profile.py` to read again."""
  compiled, _, _ = trainer.compile(batch)
  first, last = trace.traced
  try:
    hlo = compiled.as_text()
    files.write_text(os.path.join(trace.folder, op_profile.HLO_FILE), hlo)
    return op_profile.summarize(trace.folder, hlo, calls=last - first + 1,
                                backend=jax.default_backend())
  except (OSError, ValueError, KeyError) as e:
    notes.append(f'step: the trace in {trace.folder} was not summarised by '
                 f'op ({type(e).__name__}: {e})')
    return None


def _memory_fit(trainer: StepTrainer, config, rng: np.random.Generator,
                notes: list[str]) -> dict:
  """XLA's device-memory estimate as a fixed part plus a part per image, and
  the largest per-device batch each of `config.benchmark.memory_budgets_gib`
  holds by it.

  The step is compiled (not run) at `memory_fit_batch` and twice that many
  images per device: at small batches the peak is the optimiser update
  (parameters, gradients, Adam states) and hides the activations, at large
  ones it grows by the activations of each image. {} without budgets or
  without an estimate.
  """
  bench = config.benchmark
  budgets = tuple(bench.memory_budgets_gib)
  if not budgets:
    return {}
  per_device = int(bench.memory_fit_batch)
  memory = []
  for images in (per_device, 2 * per_device):
    per_process = images * jax.local_device_count()
    batch = synthetic_call_batch(trainer, config, rng, per_process)
    memory.append(_device_memory(trainer.fn.lower(trainer.state,
                                                  batch).compile()))
    del batch
  if not all(memory):
    notes.append('memory: XLA gave no memory estimate on this backend')
    return {}
  per_image = (memory[1] - memory[0]) / per_device
  if per_image <= 0:
    notes.append('memory: the estimate does not grow with the batch; no fit')
    return {}
  fixed = max(0.0, memory[0] - per_image * per_device)
  fits = {f'{gib:g}': max(0, int((gib * 2**30 - fixed) // per_image))
          for gib in budgets}
  notes.append(
      "memory: XLA's estimate for this backend (%s), per device: arguments "
      '+ outputs + temporaries - donated, fitted at %d and %d images per '
      'device; the batch that fits is per device, by that estimate alone'
      % (jax.default_backend(), per_device, 2 * per_device))
  return {'memory_fit_batches': [per_device, 2 * per_device],
          'memory_at_fit_batches_bytes': memory,
          'memory_fixed_bytes': fixed,
          'memory_marginal_per_image_bytes': per_image,
          'max_batch_per_device_by_gib': fits}


def _e2e_path(trainer: StepTrainer, config, peak) -> dict:
  """The compiled step fed by the Grain pipeline configured in `config`.

  The first call (pipeline start-up, and a compile when the real batch
  differs from the synthetic one) counts as warm-up.
  """
  bench = config.benchmark
  it = iter(pipeline.build_train_dataset(
      config, process_index=jax.process_index(),
      process_count=jax.process_count()))
  fetch_s = []

  def fetch():
    t = time.perf_counter()
    host = [next(it) for _ in range(trainer.k)]
    fetch_s.append(time.perf_counter() - t)
    return trainer.put(host)

  try:
    t = time.perf_counter()
    batch = fetch()
    first_batch_s = time.perf_counter() - t
    _, info, fresh = trainer.compile(batch)
    t = time.perf_counter()
    trainer.call(batch)
    for _ in range(bench.warmup_steps - 1):
      trainer.call(fetch())
    warmup_s = time.perf_counter() - t
    fetch_s.clear()
    seconds = _time_calls(bench.num_steps, lambda: trainer.call(fetch()))
  finally:
    if hasattr(it, 'close'):
      it.close()
  return {'num_workers': config.data.num_workers,
          'first_batch_s': first_batch_s, 'compiled_for_this_data': fresh,
          **info, 'warmup_s': warmup_s,
          **_throughput(info, seconds, config, peak),
          **time_stats(fetch_s, 'fetch_s'),
          'metrics_finite': trainer.metrics_finite()}


def _e2e_section(trainer: StepTrainer, config, records_dir: str, peak,
                 notes: list[str]) -> dict:
  """End to end from the folder (when set) and from the records."""
  section = {}
  paths = [('records', records_dir)]
  if not config.data.train_dir:
    notes.append('e2e: no config.data.train_dir, folder path not measured')
  elif config.data.use_feature_cache:
    notes.append('e2e: the feature cache needs records, folder path not '
                 'measured')
  else:
    paths.insert(0, ('folder', ''))
  for name, records in paths:
    cfg = config.copy_and_resolve_references()
    cfg.data.prepared_dir = records
    logging.info('benchmark: e2e from %s', name)
    section[name] = _e2e_path(trainer, cfg, peak)
  return section


# ------------------------------------------------------------------ input
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


def _input_section(config: ml_collections.ConfigDict, records_dir: str,
                   notes: list[str]) -> dict[str, Any]:
  """Input images/s: folder and records, with 0 and num_workers workers."""
  data, bench = config.data, config.benchmark
  results = []
  paths = [('records', records_dir)]
  if data.train_dir:
    paths.insert(0, ('folder', ''))
  else:
    notes.append('input: no config.data.train_dir, folder path not measured')
  for name, records in paths:
    for workers in sorted({0, int(data.num_workers)}):
      cfg = config.copy_and_resolve_references()
      cfg.data.prepared_dir = records
      cfg.data.num_workers = workers
      logging.info('benchmark: input from %s, %d workers', name, workers)
      results.append({'path': name, 'num_workers': workers, **_measure(cfg)})
  return {'num_batches': bench.num_batches,
          'warmup_batches': bench.warmup_batches,
          'train_dir': data.train_dir, 'results': results}


@contextlib.contextmanager
def _records_dir(config: ml_collections.ConfigDict, notes: list[str],
                 facts: dict) -> Iterator[str]:
  """config.data.prepared_dir, or records prepared into a temporary folder."""
  if config.data.prepared_dir:
    yield config.data.prepared_dir
    return
  temp_dir = tempfile.mkdtemp(prefix='jaxcolor-bench-')
  try:
    prepared_dir = os.path.join(temp_dir, 'records')
    print('config.data.prepared_dir is not set: preparing records from '
          f'{config.data.train_dir} into a temporary folder first '
          f'({prepared_dir})', flush=True)
    notes.append('records prepared into a temporary folder for this run')
    prep = config.copy_and_resolve_references()
    prep.data.prepared_dir = prepared_dir
    t = time.perf_counter()
    records_lib.prepare(prep)
    facts['prepare_s'] = time.perf_counter() - t
    yield prepared_dir
  finally:
    shutil.rmtree(temp_dir, ignore_errors=True)


# ------------------------------------------------------------------ report
def _validate(config: ml_collections.ConfigDict) -> None:
  what = config.benchmark.what
  if what not in WHATS:
    raise ValueError(f'config.benchmark.what={what!r}; supported: '
                     + ', '.join(repr(w) for w in WHATS))
  bench = config.benchmark
  if bench.memory_budgets_gib and (
      bench.memory_fit_batch < 1 or min(bench.memory_budgets_gib) <= 0):
    raise ValueError(
        'config.benchmark.memory_budgets_gib must be positive GiB and '
        f'memory_fit_batch at least 1, got {tuple(bench.memory_budgets_gib)} '
        f'and {bench.memory_fit_batch}')
  if what != 'step' and not (config.data.train_dir or
                             config.data.prepared_dir):
    raise ValueError('set config.data.train_dir (and/or prepared_dir) to the '
                     'photos to read')


def _header(config: ml_collections.ConfigDict,
            config_name: Optional[str]) -> dict[str, Any]:
  """What ran where: software, devices, model and the speed switches."""
  bench = config.benchmark
  device_kind = jax.devices()[0].device_kind
  precision = jax.config.jax_default_matmul_precision
  if bench.peak_tflops > 0:
    peak, basis = float(bench.peak_tflops), 'config.benchmark.peak_tflops'
  else:
    peak, basis = peak_tflops(device_kind, config.dtype, precision)
  return {
      'what': bench.what, 'model': config.model.name, 'config': config_name,
      'jax_version': jax.__version__,
      'jaxlib_version': jaxlib.__version__,
      'backend': jax.default_backend(), 'device_kind': device_kind,
      'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(), 'cpu_count': os.cpu_count(),
      'parallel': config.parallel, 'dtype': config.dtype,
      'matmul_precision': precision,
      'batch_size': config.data.batch_size,
      'per_device_batch': config.data.batch_size // jax.device_count(),
      'steps_per_call': config.steps_per_call,
      'grad_accum_steps': config.get('grad_accum_steps', 1),
      'donate_state': config.donate_state,
      'reuse_generator_forward': config.model.get('reuse_generator_forward'),
      'use_feature_cache': config.data.use_feature_cache,
      'conv_impl': (
          models_lib.resolve_conv_impl(config.model.conv_impl,
                                       config.get('dtype', 'float32'))
          if 'conv_impl' in config.model else None),
      # What 'auto' stood for on this CPU (main.py set its flags).
      'xla_cpu_convolutions': xla_flags.resolve(
          config.get('xla_cpu_convolutions', xla_flags.DEFAULT),
          config.get('dtype', 'float32')),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'image_size': config.data.image_size,
      'num_steps': bench.num_steps, 'warmup_steps': bench.warmup_steps,
      'peak_tflops': peak, 'peak_basis': basis,
  }


def _fmt(value, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def _table(report: dict) -> str:
  """The report as lines of text."""
  r = report
  lines = [
      f'jaxcolor benchmark ({r["what"]}): {r["model"]}'
      + (f' ({r["config"]})' if r.get('config') else '')
      + f', {r["parallel"]}, {r["dtype"]}',
      f'{r["device_count"]} x {r["device_kind"]} ({r["backend"]}), '
      f'{r["process_count"]} process(es), JAX {r["jax_version"]}; batch '
      f'{r["batch_size"]} ({r["per_device_batch"]}/device), '
      f'{r["steps_per_call"]} step(s)/call, '
      f'{r["grad_accum_steps"]} micro-batch(es)/step, {r["image_size"]} px']
  rows = []
  if 'step' in r:
    rows.append(('step (synthetic)', r['step']))
  for name, row in r.get('e2e', {}).items():
    rows.append((f'e2e {name}', row))
  if rows:
    header = (f'{"measurement":<17} {"compile s":>9} {"ms/call":>9} '
              f'{"p10-p90 ms":>15} {"images/s":>9} {"img/s/dev":>9} '
              f'{"TFLOP/s":>8} {"MFU":>6}')
    lines += [header, '-' * len(header)]
    for name, row in rows:
      spread = (f'{1e3 * row["step_s_p10"]:.1f}-'
                f'{1e3 * row["step_s_p90"]:.1f}')
      lines.append(
          f'{name:<17} {_fmt(row.get("compile_s"), ".1f"):>9} '
          f'{1e3 * row["step_s_median"]:>9.1f} {spread:>15} '
          f'{row["images_per_s"]:>9.1f} {row["images_per_s_per_device"]:>9.1f}'
          f' {_fmt(row["achieved_tflops"], ".3f"):>8} '
          f'{_fmt(row["mfu"], ".1%"):>6}')
    flops_row = r.get('step') or next(iter(r.get('e2e', {}).values()), {})
    if flops_row.get('flops_per_image'):
      lines.append(
          f'XLA FLOPs: {flops_row["flops_per_call"] / 1e9:.2f} G/call, '
          f'{flops_row["flops_per_step"] / 1e9:.2f} G/train step, '
          f'{flops_row["flops_per_image"] / 1e9:.3f} G/image; peak '
          f'{_fmt(r["peak_tflops"], "g")} TFLOP/s per device '
          f'({r["peak_basis"]})')
  step = r.get('step', {})
  if step.get('device_memory_bytes'):
    lines.append(
        f'XLA device memory: {step["device_memory_bytes"] / 2**20:.1f} '
        f'MiB/device at {r["per_device_batch"]} image(s)/device')
    if step.get('max_batch_per_device_by_gib'):
      fits = ', '.join(f'{gib} GiB: {n}' for gib, n in
                       step['max_batch_per_device_by_gib'].items())
      lines.append(
          f'XLA device memory fitted at {step["memory_fit_batches"][0]} and '
          f'{step["memory_fit_batches"][1]} images/device: '
          f'{step["memory_fixed_bytes"] / 2**20:.1f} MiB fixed + '
          f'{step["memory_marginal_per_image_bytes"] / 2**20:.2f} MiB/image;'
          f' largest batch/device that fits {fits}')
  if step.get('ops'):
    lines.append(op_profile.table(step['ops']))
  if r.get('parameters'):
    lines.append('parameters: ' + ', '.join(
        f'{what} {n:,}' for what, n in r['parameters'].items()))
  if 'input' in r:
    inp = r['input']
    header = (f'{"input path":<10} {"workers":>7} {"images/s":>10} '
              f'{"ms/batch":>9} {"warm-up s":>9}')
    lines += [f'Input pipeline: {inp["num_batches"]} batches after '
              f'{inp["warmup_batches"]} warm-up', header, '-' * len(header)]
    for row in inp['results']:
      lines.append(f'{row["path"]:<10} {row["num_workers"]:>7d} '
                   f'{row["images_per_s"]:>10.1f} {row["ms_per_batch"]:>9.1f} '
                   f'{row["warmup_s"]:>9.2f}')
  for name, ratio in r.get('input_vs_step', {}).items():
    lines.append(f'input/step images/s, {name}: {ratio:.2f}')
  for note in r.get('notes', []):
    lines.append(f'note: {note}')
  return '\n'.join(lines)


def _headline(report: dict) -> Optional[str]:
  """The section whose figures are copied to the report's top level."""
  if 'step' in report:
    return 'step'
  if 'e2e' in report:
    return 'e2e.records' if 'records' in report['e2e'] else 'e2e.folder'
  return 'input' if 'input' in report else None


# ------------------------------------------------------------------ entry
def run(config: ml_collections.ConfigDict, workdir: Optional[str],
        config_name: Optional[str] = None) -> dict[str, Any]:
  """Runs `config.benchmark.what`; prints a table, writes and returns JSON."""
  config = config.copy_and_resolve_references()
  _validate(config)
  # e.g. a random ResNet branch without weights: said in the notes
  config, notes = families.family_class(config.model.name).benchmark_config(
      config)
  what = config.benchmark.what
  out = config.benchmark.output_json or os.path.join(
      workdir or os.getcwd(), f'benchmark_{what}.json')
  if jax.process_index() == 0:  # before anything is compiled
    files.check_writable(os.path.dirname(os.path.abspath(out)),
                         'the folder of config.benchmark.output_json')
  if what != 'input':
    parallel.maybe_initialize_distributed(config.distributed)
    trainer_lib.check_devices(config)
  report = _header(config, config_name)
  peak = report['peak_tflops']
  facts = {}
  trainer = None
  if what != 'input':
    trainer = StepTrainer(config)
    report['init_s'] = trainer.init_s
    report['parameters'] = trainer.parameters
  if what in ('step', 'all'):
    logging.info('benchmark: step on synthetic data')
    report['step'] = _step_section(
        trainer, config, peak,
        os.path.join(workdir or os.getcwd(), 'profile'), notes)
  elif config.get('profile_steps'):
    notes.append('config.profile_steps traces the step section only '
                 "(benchmark.what='step' or 'all'); nothing traced")
  if what != 'step':
    with _records_dir(config, notes, facts) as records:
      if what in ('e2e', 'all'):
        report['e2e'] = _e2e_section(trainer, config, records, peak, notes)
      if what in ('input', 'all'):
        report['input'] = _input_section(config, records, notes)
  report['prepare_s'] = facts.get('prepare_s')
  if what == 'all':
    step_ips = report['step']['images_per_s']
    report['input_vs_step'] = {
        f'{row["path"]}, {row["num_workers"]} workers':
            row['images_per_s'] / step_ips
        for row in report['input']['results']}
  report['notes'] = notes
  report['headline'] = _headline(report)
  section = report
  for part in (report['headline'] or '').split('.'):
    section = section.get(part, {}) if part else {}
  if report['headline'] == 'input':
    report.update(section)
  else:
    report.update({k: section.get(k) for k in HEADLINE_KEYS})

  print(_table(report), flush=True)
  if jax.process_index() == 0:
    files.write_json(out, report, indent=2)
    print(f'Wrote {out}', flush=True)
  return report


def run_input(config: ml_collections.ConfigDict,
              workdir: Optional[str]) -> dict[str, Any]:
  """The input pipeline alone (`what='input'`)."""
  config = config.copy_and_resolve_references()
  config.benchmark.what = 'input'
  return run(config, workdir)


def main(config, args) -> None:
  run(config, args.workdir, args.config_name)
