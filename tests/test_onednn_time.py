"""benchmarks/onednn_time.py: oneDNN's thread time per step from verbose logs."""

import json
import os
import subprocess
import sys

import pytest

from jaxcolor.kernels import library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import onednn_time  # noqa: E402  pylint: disable=wrong-import-position

# Three "steps" of the dnnl kernel: a convolution's forward and both grads,
# 40 ms apart (more than --min_step_ms below).
STEPS = r'''
import time
import jax, jax.numpy as jnp
from jaxcolor.kernels import dnnl_conv
x = jnp.ones((4, 8, 8, 16), jnp.float32)
w = jnp.full((3, 3, 16, 32), 0.01, jnp.float32)
grad = jax.jit(jax.value_and_grad(
    lambda x, w: jnp.sum(dnnl_conv.conv(x, w, 1, ((1, 1), (1, 1))) ** 2),
    argnums=(0, 1)))
for _ in range(3):
  jax.block_until_ready(grad(x, w))
  time.sleep(0.04)
'''


@pytest.fixture(scope='module')
def verbose_log(tmp_path_factory):
  if library.load():
    pytest.skip(library.load())
  path = tmp_path_factory.mktemp('onednn') / 'verbose.log'
  env = dict(os.environ, PYTHONPATH=ROOT, ONEDNN_VERBOSE='1',
             ONEDNN_VERBOSE_TIMESTAMP='1')
  with open(path, 'w', encoding='utf-8') as out:
    subprocess.run([sys.executable, '-c', STEPS], cwd=ROOT, env=env,
                   stdout=out, stderr=subprocess.STDOUT, timeout=300,
                   check=True)
  return path


def run_tool(*args):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'onednn_time.py'),
       *map(str, args)], cwd=ROOT, capture_output=True, text=True,
      timeout=120)


def test_splits_a_real_log_into_steps_and_sums_their_thread_time(
    verbose_log, tmp_path):
  out = tmp_path / 'time.json'
  result = run_tool(verbose_log, '--steps', 3, '--min_step_ms', 20, '--json', out)
  assert result.returncode == 0, result.stderr
  steps = json.loads(out.read_text())['log']['steps']
  assert len(steps) == 3
  for s in steps:
    kinds = s['thread_ms_by_kind']
    for kind in ('forward_training', 'backward_data', 'backward_weights'):
      assert kinds[f'convolution {kind}'] > 0
    assert s['thread_ms'] == pytest.approx(sum(kinds.values()))
    assert sum(s['ms_with_n_running'].values()) == pytest.approx(s['wall_ms'])
    assert 0 < s['union_ms'] <= s['wall_ms'] + 1e-6
    # Start stamps near 1.8e12 ms are float64s 2.4e-4 ms apart.
    assert s['union_ms'] <= s['thread_ms'] + 1e-3 * s['execs']
  assert 'step 2: wall' in result.stdout


def test_a_log_against_itself_differs_by_the_team_size_only(verbose_log):
  steps = onednn_time.split_steps(onednn_time.read_log(verbose_log),
                                  min_step_ms=20)
  ours = onednn_time.by_layer(steps[-1])
  peer = onednn_time.by_layer(steps[-1], threads=2)
  rows = onednn_time.compare_layers(ours, peer, top=100)
  assert len(rows) == len(ours)
  assert all(t_peer == pytest.approx(2 * t_ours) for _, t_ours, t_peer in rows)
  assert any(key.startswith('convolution backward_weights ic16oc32_ih8')
             for key, _, _ in rows)  # the batch size is taken out
  result = run_tool(verbose_log, '--peer', verbose_log, '--min_step_ms', 20,
                    '--peer_threads', 1)
  assert result.returncode == 0, result.stderr
  assert 'against the peer' in result.stdout


def test_an_exec_of_zero_ms_never_counts_below_zero():
  step = [onednn_time.Exec(0.0, 2.0, 'convolution', 'forward_training', 'a'),
          onednn_time.Exec(2.0, 0.0, 'reorder', 'undef', 'b'),
          onednn_time.Exec(2.0, 1.0, 'reorder', 'undef', 'c')]
  s = onednn_time.step_summary(step)
  assert all(int(n) >= 0 for n in s['ms_with_n_running'])
  assert s['ms_with_n_running']['1'] == pytest.approx(3.0)
  assert s['union_ms'] == pytest.approx(3.0) and s['wall_ms'] == 3.0


def test_reads_both_verbose_formats():
  ours = ('onednn_verbose,1796617413114.424072,exec,cpu,convolution,'
          'brgconv:avx512_core_bf16,forward_training,src_bf16::blocked:acdb::'
          'f0,,alg:convolution_direct,mb16_ic512oc512_ih16oh15kh4sh1dh0ph1_'
          'iw16ow15kw4sw1dw0pw1,130.2\n')
  torch = ('onednn_verbose,v1,1796617452901.02,primitive,exec,cpu,convolution,'
           'brg_conv_bwd:avx512_core_bf16,backward_data,src:bf16::blocked:'
           'acdb::f0,attr-scratchpad:user,alg:convolution_direct,mb32_ic512oc'
           '512_ih16oh15kh4sh1dh0ph1_iw16ow15kw4sw1dw0pw1,131.461\n')
  a, b = onednn_time.parse_line(ours), onednn_time.parse_line(torch)
  assert (a.start_ms, a.ms, a.primitive, a.prop) == (
      1796617413114.424072, 130.2, 'convolution', 'forward_training')
  assert (b.start_ms, b.ms, b.prop) == (1796617452901.02, 131.461,
                                        'backward_data')
  assert onednn_time.layer_key(a) == ('convolution forward_training ic512oc512'
                                      '_ih16oh15kh4sh1dh0ph1_iw16ow15kw4sw1dw0pw1')
  # The peer's transposed convolution, as the convolution it transposes:
  # its forward is that convolution's input grad, sides swapped.
  deconv = onednn_time.parse_line(
      'onednn_verbose,v1,1.5,primitive,exec,cpu,deconvolution,brgdeconv,'
      'forward_training,src,,alg:deconvolution_direct,mb32_ic1536oc512_ih2oh4'
      'kh4sh2dh0ph1_iw2ow4kw4sw2dw0pw1,12.5\n')
  assert onednn_time.layer_key(deconv) == (
      'convolution backward_data ic512oc1536_ih4oh2kh4sh2dh0ph1_iw4ow2kw4sw2'
      'dw0pw1')
  assert onednn_time.parse_line('onednn_verbose,info,cpu,isa:AVX-512\n') is None


@pytest.mark.parametrize('text,expected', [
    ('onednn_verbose,exec,cpu,reorder,jit:uni,undef,src,,,64x2,0.1\n',
     'without a timestamp: run with ONEDNN_VERBOSE_TIMESTAMP=1'),
    ('step 1: 3595.8 ms\n', 'no oneDNN exec lines'),
])
def test_bad_logs_fail_with_one_line(tmp_path, text, expected):
  log = tmp_path / 'bad.log'
  log.write_text(text)
  result = run_tool(log)
  assert result.returncode == 2
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith('onednn_time: ') and expected in line


def test_missing_log_and_unwritable_json_fail_with_one_line(
    verbose_log, tmp_path):
  result = run_tool(tmp_path / 'none.log')
  assert result.returncode == 2 and 'No such file' in result.stderr
  result = run_tool(verbose_log, '--json', '/proc/no/such/out.json')
  assert result.returncode == 2 and 'is not writable' in result.stderr
