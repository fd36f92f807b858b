"""--mode=benchmark: the trainer's step, end to end and input, JSON fields."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from jaxcolor.modes import benchmark
from jaxcolor.data import pipeline
from jaxcolor.runtime import config_check
import imagefactory
import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEADER_FIELDS = (
    'what', 'model', 'config', 'jax_version', 'jaxlib_version', 'backend',
    'device_kind', 'device_count', 'local_device_count', 'process_count',
    'cpu_count', 'parallel', 'dtype', 'matmul_precision', 'batch_size',
    'per_device_batch', 'steps_per_call', 'donate_state',
    'reuse_generator_forward', 'use_feature_cache', 'conv_impl',
    'xla_cpu_convolutions', 'xla_flags', 'image_size',
    'num_steps',
    'warmup_steps', 'peak_tflops', 'peak_basis', 'init_s', 'prepare_s',
    'notes', 'headline')
TIMING_FIELDS = (
    'compile_s', 'step_s_median', 'step_s_min', 'step_s_max', 'step_s_p10',
    'step_s_p90', 'step_s_std', 'train_step_s', 'images_per_s',
    'images_per_s_per_device', 'flops_per_call', 'flops_per_step',
    'flops_per_image', 'achieved_tflops', 'mfu')
STEP_FIELDS = TIMING_FIELDS + (
    'data', 'bytes_accessed_per_call', 'device_memory_bytes', 'warmup_s',
    'metrics_finite')
E2E_FIELDS = TIMING_FIELDS + (
    'num_workers', 'first_batch_s', 'compiled_for_this_data', 'warmup_s',
    'fetch_s_median', 'fetch_s_p90', 'metrics_finite')

FEW_STEPS = {'benchmark.num_steps': 3, 'benchmark.warmup_steps': 2}


def override(config, values):
  for key, value in values.items():
    section, leaf = key.rsplit('.', 1) if '.' in key else ('', key)
    target = config
    for part in filter(None, section.split('.')):
      target = target[part]
    target[leaf] = value
  return config


def check_timing(row, devices=4, batch=8, steps_per_call=1):
  """Self-consistent times, throughput and FLOPs of one measurement."""
  assert row['step_s_min'] <= row['step_s_median'] <= row['step_s_max']
  assert row['step_s_p10'] <= row['step_s_p90'] and row['step_s_std'] >= 0
  images = batch * steps_per_call
  assert row['images_per_s'] == pytest.approx(images / row['step_s_median'])
  assert row['images_per_s_per_device'] == pytest.approx(
      row['images_per_s'] / devices)
  assert row['flops_per_call'] > 0
  assert row['flops_per_step'] == pytest.approx(
      row['flops_per_call'] / steps_per_call)
  assert row['flops_per_image'] == pytest.approx(row['flops_per_call'] / images)
  assert row['achieved_tflops'] == pytest.approx(
      row['flops_per_call'] / row['step_s_median'] / 1e12)
  assert row['metrics_finite'] is True


@pytest.fixture(scope='module')
def pmap_report(tmp_path_factory):
  """main.py --mode=benchmark on the tiny config (pmap), in a fresh process.

  Returns (JSON report, stdout, modules of TensorFlow imported).
  """
  out = tmp_path_factory.mktemp('bench') / 'step.json'
  args = ['--mode=benchmark', '--config=configs/tiny.py',
          '--config.benchmark.num_steps=3', '--config.benchmark.warmup_steps=2',
          '--config.benchmark.peak_tflops=0.5',
          '--config.benchmark.memory_budgets_gib=(16,40,80)',
          '--config.benchmark.memory_fit_batch=4',
          f'--config.benchmark.output_json={out}']
  script = (
      'import runpy, sys\n'
      f'sys.argv = ["main.py"] + {args!r}\n'
      'try:\n'
      '  runpy.run_path("main.py", run_name="__main__")\n'
      'except SystemExit as e:\n'
      '  assert not e.code, e.code\n'
      'print("TF_MODULES", sorted(m for m in sys.modules\n'
      '                           if m.split(".")[0] == "tensorflow"))\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    report = json.load(f)
  tf_line = [l for l in result.stdout.splitlines()
             if l.startswith('TF_MODULES')]
  return report, result.stdout, tf_line[0]


def test_step_benchmark_writes_every_field(pmap_report):
  report, stdout, _ = pmap_report
  for key in HEADER_FIELDS + TIMING_FIELDS + ('step',):
    assert key in report, key
  for key in STEP_FIELDS:
    assert key in report['step'], key
  assert report['what'] == 'step' and report['headline'] == 'step'
  assert report['config'] == 'configs/tiny.py'
  assert report['model'] == 'edge_saliency_gan'
  assert (report['device_count'], report['per_device_batch']) == (4, 2)
  assert report['parallel'] == 'pmap' and report['dtype'] == 'float32'
  assert report['peak_tflops'] == 0.5
  assert report['xla_cpu_convolutions'] == 'eigen'
  assert '--xla_force_host_platform_device_count=4' in report['xla_flags']
  assert '--xla_cpu_experimental_ynn_fusion_type' in report['xla_flags']
  assert 'e2e' not in report and 'input' not in report
  step = report['step']
  check_timing(step)
  assert step['compile_s'] > 0 and step['device_memory_bytes'] > 0
  # The top level repeats the headline section.
  assert all(report[k] == step[k] for k in TIMING_FIELDS)
  assert report['mfu'] == pytest.approx(step['achieved_tflops'] / (0.5 * 4))
  assert 'step (synthetic)' in stdout and 'XLA FLOPs' in stdout
  check_memory_fit(step, per_device=2, fit_batch=4,
                   budgets=('16', '40', '80'))
  assert 'largest batch/device that fits 16 GiB' in stdout
  params = report['parameters']
  assert params['ResNet-18 (frozen)'] == 11_689_512  # torchvision's count
  assert params['generator'] > 0 and params['critic'] > 0
  assert 'parameters: generator' in stdout


def check_memory_fit(step, per_device, fit_batch, budgets):
  """The fixed + per-image split of XLA's estimate and the batches that
  fit each budget by it."""
  fixed = step['memory_fixed_bytes']
  per_image = step['memory_marginal_per_image_bytes']
  assert fixed > 0 and per_image > 0
  assert step['memory_fit_batches'] == [fit_batch, 2 * fit_batch]
  for images, memory in zip(step['memory_fit_batches'],
                            step['memory_at_fit_batches_bytes']):
    assert fixed + per_image * images == pytest.approx(memory)
  assert step['device_memory_per_image_bytes'] == pytest.approx(
      step['device_memory_bytes'] / per_device)
  fits = step['max_batch_per_device_by_gib']
  assert list(fits) == list(budgets)
  for gib, n in fits.items():
    assert fixed + n * per_image <= float(gib) * 2**30
    assert fixed + (n + 1) * per_image > float(gib) * 2**30


def test_benchmark_does_not_import_tensorflow(pmap_report):
  assert pmap_report[2] == 'TF_MODULES []'


def test_all_runs_step_e2e_and_input_with_shard_map(pmap_report, tmp_path,
                                                    capsys):
  """Three sections; shard_map's step has pmap's FLOPs (both with optax's
  Adam: XLA's cost analysis counts no custom call's FLOPs, the kernel
  library's Adam that 'auto' takes under shard_map on CPUs included)."""
  folder = str(tmp_path / 'photos')
  imagefactory.copy_samples(folder, 16)
  config = override(tiny.get_config(), {
      **FEW_STEPS, 'benchmark.what': 'all', 'parallel': 'shard_map',
      'optim.adam_impl': 'optax',
      'data.train_dir': folder, 'data.val_fraction': 0.0,
      'data.prepare_processes': 1, 'benchmark.num_batches': 2,
      'benchmark.warmup_batches': 1})
  report = benchmark.run(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'benchmark_all.json') as f:
    assert json.load(f) == report
  for key in HEADER_FIELDS + TIMING_FIELDS + ('step', 'e2e', 'input'):
    assert key in report, key
  assert report['headline'] == 'step' and report['parallel'] == 'shard_map'
  assert report['prepare_s'] > 0
  check_timing(report['step'])
  pmap_flops = pmap_report[0]['step']['flops_per_step']
  assert report['step']['flops_per_step'] == pytest.approx(pmap_flops,
                                                           rel=0.01)
  assert sorted(report['e2e']) == ['folder', 'records']
  for row in report['e2e'].values():
    assert all(key in row for key in E2E_FIELDS)
    check_timing(row)
    assert row['compiled_for_this_data'] is False  # the pipeline's shapes
    assert 0 <= row['fetch_s_median'] <= row['step_s_median']
  results = report['input']['results']
  assert [(r['path'], r['num_workers']) for r in results] == [
      ('folder', 0), ('records', 0)]
  assert all(r['images_per_s'] > 0 for r in results)
  assert report['input_vs_step'] == {
      f'{r["path"]}, 0 workers': pytest.approx(
          r['images_per_s'] / report['step']['images_per_s'])
      for r in results}
  out = capsys.readouterr().out
  assert 'e2e folder' in out and 'e2e records' in out
  assert 'records prepared into a temporary folder for this run' in (
      report['notes'])
  temp = re.search(r'into a temporary folder first \((.*)\)', out).group(1)
  assert not os.path.exists(temp)  # deleted afterwards


@pytest.mark.parametrize('make_config,parallel,model', [
    (helpers.tiny_scgan, 'pmap', 'scgan'),
    (helpers.tiny_cic, 'shard_map', 'cic'),
])
def test_baselines_run_the_step_benchmark(tmp_path, make_config, parallel,
                                          model):
  config = override(make_config(), {
      **FEW_STEPS, 'parallel': parallel, 'benchmark.memory_budgets_gib': (1,),
      'benchmark.memory_fit_batch': 2,
      'benchmark.output_json': str(tmp_path / 'b.json')})
  report = benchmark.run(config, None)
  assert report['model'] == model and report['parallel'] == parallel
  check_timing(report['step'])
  check_memory_fit(report['step'], per_device=2, fit_batch=2,
                   budgets=('1',))
  assert set(report['parameters']) == (
      {'network'} if model == 'cic' else {'generator', 'critic'})
  assert report['mfu'] is None  # no peak for a CPU unless given
  assert os.path.exists(tmp_path / 'b.json')


def test_bad_settings_fail_before_any_work():
  config = tiny.get_config()
  config.benchmark.what = 'train'
  with pytest.raises(ValueError, match="what='train'; supported: 'step'"):
    benchmark.run(config, None)
  config = override(tiny.get_config(), {'benchmark.num_steps': 0})
  with pytest.raises(ValueError, match='benchmark.num_steps=0'):
    config_check.check(config)  # main.py's one check of the shared keys
  config = override(tiny.get_config(), {'benchmark.what': 'e2e',
                                        'data.train_dir': ''})
  with pytest.raises(ValueError, match='set config.data.train_dir'):
    benchmark.run(config, None)
  for bad in ({'benchmark.memory_budgets_gib': (16, 0)},
              {'benchmark.memory_budgets_gib': (16,),
               'benchmark.memory_fit_batch': 0}):
    with pytest.raises(ValueError, match='memory_budgets_gib must be '
                       'positive GiB and memory_fit_batch at least 1'):
      benchmark.run(override(tiny.get_config(), bad), None)


@pytest.mark.parametrize('kind,dtype,precision,peak', [
    ('NVIDIA H200', 'bfloat16', None, 989.0),
    ('NVIDIA H100 80GB HBM3', 'float32', None, 495.0),
    ('NVIDIA H100 80GB HBM3', 'float32', 'highest', 67.0),
    ('NVIDIA H100 PCIe', 'bfloat16', None, 756.0),
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', None, 312.0),
    ('NVIDIA L4', 'float32', 'float32', 30.0),
    ('NVIDIA L40S', 'bfloat16', None, None),
    ('TPU v5 lite', 'bfloat16', None, 197.0),
    ('TPU v5', 'float32', None, 459.0),
    ('TPU v4', 'float32', 'highest', None),
    ('cpu', 'float32', None, None),
])
def test_peak_table(kind, dtype, precision, peak):
  value, basis = benchmark.peak_tflops(kind, dtype, precision)
  assert value == peak
  assert kind in basis and basis.startswith('table:') == (peak is not None)


def test_flops_count_every_step_of_a_multi_step_call():
  """XLA counts a loop body once; xla_cost multiplies by the trip count."""
  x = jnp.ones((32, 32))

  def steps(k):
    body = lambda c, _: (jnp.tanh(c @ x), None)
    return jax.jit(lambda c: jax.lax.scan(body, c, None, length=k)[0]).lower(
        x).compile()

  one = benchmark.xla_cost(steps(1))
  three = benchmark.xla_cost(steps(3), steps_per_call=3)
  assert one['flops'] >= 2 * 32 ** 3
  assert three['flops'] == pytest.approx(3 * one['flops'], rel=0.01)
  assert three['bytes accessed'] > 2 * one['bytes accessed']


def test_synthetic_batch_matches_the_pipeline():
  config = tiny.get_config()
  real = next(iter(pipeline.build_train_dataset(config, process_index=0,
                                                process_count=1)))
  fake = benchmark.synthetic_batch(config, np.random.default_rng(0), 8)
  assert {k: (v.shape, v.dtype) for k, v in fake.items()} == {
      k: (v.shape, v.dtype) for k, v in real.items()}
  assert all(v.std() > 0 for v in fake.values())
  config.data.use_feature_cache = True
  config.data.feature_cache_dtype = 'bfloat16'
  feats = benchmark.synthetic_batch(config, np.random.default_rng(0), 2)[
      'resnet_features']
  assert feats.shape == (2, 2, 2, 512) and str(feats.dtype) == 'bfloat16'
  assert float(np.asarray(feats, np.float32).std()) > 0
