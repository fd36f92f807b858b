"""Profiler traces (config.profile_steps), their summary by XLA op, and the
persistent compilation cache.

The runs use the toy family (tests/toy_family.py: a learned tint), whose
programs compile in well under a second, so each test takes seconds.
"""

import glob
import gzip
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxcolor.modes import benchmark
from jaxcolor.modes import train
from jaxcolor.runtime import compile_cache
from jaxcolor.runtime import config_check
from jaxcolor.runtime import op_profile
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
  # Where the traced call's time went, by XLA op: in the JSON and the table.
  ops = report['step']['ops']
  assert ops['ms_per_call'] > 0 and ops['top_ops']
  assert sum(ops['by_kind'].values()) == pytest.approx(ops['ms_per_call'])
  assert ops['unmatched_ms'] == 0
  assert 'XLA ops, busy time per call' in benchmark._table(report)
  # The step's HLO is beside the trace, and the script reads the two again.
  folder = profiler.newest_trace_folder(str(tmp_path / 'profile'))
  assert os.path.getsize(os.path.join(folder, op_profile.HLO_FILE)) > 0
  again = subprocess.run(
      [sys.executable, os.path.join(helpers.ROOT, 'benchmarks',
                                    'op_profile.py'), folder, '--top', '3'],
      capture_output=True, text=True, timeout=60, check=True)
  assert f'busy time per call: {ops["ms_per_call"]:.1f} ms' in again.stdout


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


class _Net(nn.Module):
  """A convolution 'd1' and a dense layer 'head'."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name='d1')(x))
    return nn.Dense(4, name='head')(x.reshape(x.shape[0], -1))


def test_op_profile_names_each_ops_kind_pass_and_layer(tmp_path):
  net = _Net()
  x = jnp.ones((4, 16, 16, 3))
  params = net.init(jax.random.key(0), x)

  def loss(params, x):
    # A loop too: its `while` op is left out, the ops of its body count.
    y = jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y) * 1.5, x)
    return jnp.mean(net.apply(params, y) ** 2)

  compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
  trace = profiler.StepTrace((1, 2), str(tmp_path))
  for call in (1, 2):
    trace.step_begins(call)
    trace.step_done(call, compiled(params, x))
  summary = op_profile.summarize(trace.folder, compiled.as_text(), calls=2,
                                 backend='cpu', top=100)
  rows = summary['top_ops']
  assert {'convolution', 'matmul', 'elementwise'} <= set(summary['by_kind'])
  assert all(r['kind'] in op_profile.KINDS for r in rows)
  computations, _ = op_profile.parse_hlo(compiled.as_text())
  loops = [op.name for ops in computations.values() for op in ops
           if op.opcode == 'while']
  assert loops and not {r['op'] for r in rows} & set(loops)
  assert {r['layer'] for r in rows} >= {'_Net/d1', '_Net/head'}
  forward = [r for r in rows if r['layer'] == '_Net/d1' and
             r['kind'] == 'convolution' and r['pass'] == 'forward']
  assert forward and forward[0]['library'] in ('Eigen', 'YNNPACK')
  assert forward[0]['shape'] == 'f32[4,16,16,8]'
  # 2 × output elements × 3×3 taps × 3 input channels; its rate from it.
  assert forward[0]['gflop'] == pytest.approx(2 * 4 * 16 * 16 * 8 * 9 * 3
                                              / 1e9)
  assert forward[0]['gflop_per_s'] == pytest.approx(
      forward[0]['gflop'] / forward[0]['ms'] * 1e3)
  assert summary['gflop_per_s']['convolution'] > 0
  assert any(r['layer'] == '_Net/head' and r['pass'] == 'backward'
             for r in rows)
  # Per call: the two calls' time is halved, and the parts add up.
  assert summary['ms_per_call'] == pytest.approx(sum(r['ms'] for r in rows))
  assert sum(summary['by_pass'].values()) == pytest.approx(
      summary['ms_per_call'])
  text = op_profile.table(summary)
  assert 'by kind: convolution' in text and '_Net/d1' in text


def test_op_profile_splits_overlapping_ops_and_follows_async_ones():
  def op(name, ts, dur, pid=1, tid=1):
    return {'ph': 'X', 'name': name, 'pid': pid, 'tid': tid, 'ts': ts,
            'dur': dur, 'args': {'hlo_op': name, 'hlo_module': 'm'}}

  def end(name, ts, tid):
    return {'ph': 'X', 'name': f'end: {name}', 'pid': 1, 'tid': tid,
            'ts': ts, 'dur': 0.1}

  events = [
      # 'conv' returns at once and ends 100 µs later on another thread;
      # 'add' runs beside it for 40 µs: they split those 40.
      op('conv', 0, 1), end('conv', 100, tid=2),
      op('add', 10, 40, tid=3), end('add', 49, tid=3),
      # a second run of 'conv' ends at its own (second) marker
      op('conv', 200, 1), end('conv', 250, tid=2),
      op('other_module', 0, 500)]
  events[-1]['args']['hlo_module'] = 'n'
  times, timelines = op_profile.op_times(events, {1: '/host:CPU'}, 'm')
  assert timelines == 1
  assert times['add'] == pytest.approx(20)
  assert times['conv'] == pytest.approx(80 + 50)
  assert 'other_module' not in times
  # With device timelines (GPUs), the host's launch events are left out and
  # each device is a timeline of its own.
  kernels = [op('conv', 0, 30, pid=7), op('conv', 0, 10, pid=8),
             op('conv', 0, 500, pid=1)]
  times, timelines = op_profile.op_times(
      kernels, {1: '/host:CPU', 7: '/device:GPU:0', 8: '/device:GPU:1'}, 'm')
  assert timelines == 2 and times['conv'] == pytest.approx(40)


def test_op_profile_of_a_folder_without_a_trace_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no .*trace.json.gz in'):
    op_profile.summarize(str(tmp_path), '', calls=1, backend='cpu')
  trace = tmp_path / 'host.trace.json.gz'
  trace.write_bytes(b'not gzip')
  with pytest.raises(OSError):
    op_profile.summarize(str(tmp_path), '', calls=1, backend='cpu')
  whole = gzip.compress(json.dumps({'traceEvents': [
      {'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': 'x'}},
      {'ph': 'X', 'pid': 1, 'tid': 1, 'name': 'add', 'ts': 0, 'dur': 5,
       'args': {'hlo_op': 'add'}},
      # not events: left out
      'junk', {'ph': 'X', 'name': 'mul'}, {'ph': 'X', 'pid': 1, 'name': 3},
      {'ph': 'X', 'pid': 1, 'tid': 1, 'name': 'sub', 'ts': 'x',
       'args': {'hlo_op': 'sub'}},
      {'ph': 'X', 'pid': 1, 'tid': 1, 'name': 'neg', 'ts': 9, 'dur': 1,
       'args': 'not a mapping'}]}).encode())
  trace.write_bytes(whole)
  hlo = 'HloModule m\nENTRY %main {\n  %add = f32[2] add(%a, %b)\n}\n'
  summary = op_profile.summarize(str(tmp_path), hlo, calls=1, backend='cpu')
  assert [r['op'] for r in summary['top_ops']] == ['add']
  # Cut short, or JSON that is not a trace: a ValueError naming the file.
  trace.write_bytes(whole[:len(whole) // 2])
  with pytest.raises(ValueError, match='host.trace.json.gz: truncated'):
    op_profile.summarize(str(tmp_path), hlo, calls=1, backend='cpu')
  trace.write_bytes(gzip.compress(b'{"traceEvents": 7}'))
  with pytest.raises(ValueError, match='host.trace.json.gz: not a trace'):
    op_profile.summarize(str(tmp_path), hlo, calls=1, backend='cpu')


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
