"""Profiler traces (config.profile_steps) and the persistent compilation cache.

The runs use the toy family (tests/toy_family.py: a learned tint), whose
programs compile in well under a second, so each test takes seconds.
"""

import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxcolor.modes import benchmark
from jaxcolor.modes import train
from jaxcolor.runtime import compile_cache
from jaxcolor.runtime import config_check
from jaxcolor.runtime import profiler
import helpers
import toy_family

# One evaluation, sample grid and checkpoint, at the end of 3 steps.
SCHEDULE = ('num_train_steps', 'log_every_steps', 'image_every_steps',
            'eval_every_steps', 'checkpoint_every_steps')
TOY_ENV = {'PYTHONPATH': os.pathsep.join(
    [os.path.join(helpers.ROOT, 'tests'), helpers.ROOT])}


def traces(log_dir):
  """{file name: bytes} of the xplane files under log_dir/plugins/profile."""
  found = glob.glob(os.path.join(log_dir, 'plugins', 'profile', '*',
                                 '*.xplane.pb'))
  return {os.path.basename(p): os.path.getsize(p) for p in found}


# ------------------------------------------------------------------ profiler
def test_training_traces_the_chosen_steps(tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  config = helpers.override(toy_family.get_config(), profile_steps=(2, 2),
                            **{k: 3 for k in SCHEDULE})
  with caplog.at_level('INFO'):
    train.train_and_evaluate(config, workdir)
  found = traces(os.path.join(workdir, 'profile'))
  assert found and all(size > 0 for size in found.values())
  folder = profiler.newest_trace_folder(os.path.join(workdir, 'profile'))
  assert os.path.getsize(os.path.join(folder, 'perfetto_trace.json.gz')) > 0
  assert f'Profiler trace of steps 2..3 -> {folder}' in caplog.text
  assert 'tensorboard --logdir' in caplog.text


def test_benchmark_traces_timed_calls_into_the_current_folder(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no workdir: the current folder
  config = helpers.override(toy_family.get_config(), **{
      'benchmark.num_steps': 3, 'benchmark.warmup_steps': 1,
      'profile_steps': (2, 1)})
  report = benchmark.run(config, None)
  found = traces(str(tmp_path / 'profile'))
  assert found and all(size > 0 for size in found.values())
  assert any('timed calls 2..2 traced by jax.profiler into '
             f'{tmp_path / "profile"}' in note for note in report['notes'])
  assert os.path.exists(tmp_path / 'benchmark_step.json')


def _step(x):
  return jnp.sin(x) * 2.0


def test_step_trace_covers_whole_calls_and_stops_early(tmp_path, caplog):
  fn = jax.jit(_step)
  x = jnp.ones((8,))
  # Calls of 2 steps (1-2, 3-4, 5-6); steps 2..3 span the first two calls.
  trace = profiler.StepTrace((2, 2), str(tmp_path / 'a'), steps_per_call=2)
  for first in (1, 3, 5):
    trace.step_begins(first)
    x = fn(x)
    trace.step_done(first + 1, x)
  assert trace.traced == (1, 4) and not trace.running
  assert traces(str(tmp_path / 'a'))
  # A run that ends inside the window: close() writes what was traced.
  trace = profiler.StepTrace((2, 10), str(tmp_path / 'b'))
  for step in (1, 2, 3):
    trace.step_begins(step)
    x = fn(x)
    trace.step_done(step, x)
  assert trace.running
  assert trace.close() == profiler.newest_trace_folder(str(tmp_path / 'b'))
  assert trace.traced == (2, 3) and traces(str(tmp_path / 'b'))
  assert trace.close() is None  # once
  # A window outside the run's steps: a warning, no trace.
  with caplog.at_level('WARNING'):
    trace = profiler.StepTrace((7, 2), str(tmp_path / 'c'), run=range(1, 5))
  assert 'steps 7..8 are not in this run (steps 1..4)' in caplog.text
  for step in range(1, 5):
    trace.step_begins(step)
    trace.step_done(step, fn(x))
  assert trace.close() is None and not os.path.exists(tmp_path / 'c')


@pytest.mark.parametrize('value,message', [
    ((0, 2), 'must both be >= 1'),
    ((2, 0), 'must both be >= 1'),
    ((2,), r'must be \(start, count\)'),
    ((1, 2, 3), r'must be \(start, count\)'),
    ((1.5, 2), r'must be \(start, count\)'),
])
def test_config_check_rejects_bad_profile_steps(value, message):
  config = helpers.tiny_config()
  config.profile_steps = value
  with pytest.raises(ValueError, match=r'config\.profile_steps=.*' + message):
    config_check.check(config)


def test_config_check_accepts_good_profile_steps():
  for value in ((), (1, 1), (10, 3)):
    config_check.check(helpers.tiny_config(profile_steps=value))


# ------------------------------------------------------------------ cache
def cache_entries(folder):
  return sorted(n for n in os.listdir(folder) if n.endswith('-cache'))


def run_toy_benchmark(tmp_path, cache_dir):
  """main.py --mode=benchmark of the toy in a fresh process, with its own
  cache setting (JAX_COMPILATION_CACHE_DIR unset)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', **TOY_ENV)
  env.pop(compile_cache.ENV, None)
  # The toy compiles faster than JAX's 1 s threshold for writing an entry.
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  result = subprocess.run(
      [sys.executable, 'main.py', '--mode=benchmark',
       '--config=tests/toy_family.py', f'--workdir={tmp_path / "bench"}',
       '--config.benchmark.num_steps=1', '--config.benchmark.warmup_steps=0',
       f'--config.compilation_cache_dir={cache_dir}'],
      cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_a_second_start_reads_the_compilation_cache(tmp_path):
  cache = tmp_path / 'xla'
  first = run_toy_benchmark(tmp_path, str(cache))
  assert f'Compilation cache: {cache}' in first.stderr
  entries = cache_entries(cache)
  assert any(n.startswith('jit_') for n in entries), entries
  assert all(os.path.getsize(cache / n) > 0 for n in entries)
  run_toy_benchmark(tmp_path, str(cache))
  assert cache_entries(cache) == entries  # every program came from the cache


def test_an_unusable_cache_folder_is_a_warning(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  result = run_toy_benchmark(tmp_path, str(blocker / 'xla'))
  lines = [l for l in result.stderr.splitlines() if 'Compilation cache' in l]
  assert len(lines) == 1 and lines[0].startswith('W'), result.stderr[-2000:]
  assert f'{blocker / "xla"} is not usable (NotADirectoryError' in lines[0]
  assert 'going on without the cache' in lines[0]
  assert 'Traceback' not in result.stderr


def test_cache_folder_rules(monkeypatch, tmp_path):
  monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
  assert compile_cache.resolve(compile_cache.DEFAULT) == os.path.expanduser(
      '~/.cache/jaxcolor/xla')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.resolve(compile_cache.DEFAULT) == str(
      tmp_path / 'jaxcolor' / 'xla')
  assert compile_cache.resolve('') == ''
  assert compile_cache.resolve('rel/dir') == os.path.abspath('rel/dir')
  # The env var wins, and nothing about JAX is changed (conftest sets it).
  assert os.environ[compile_cache.ENV]
  before = jax.config.jax_compilation_cache_dir
  assert compile_cache.apply(str(tmp_path / 'other')) == os.environ[
      compile_cache.ENV]
  assert jax.config.jax_compilation_cache_dir == before
  assert not os.path.exists(tmp_path / 'other')
