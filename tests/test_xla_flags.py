"""xla_flags: main.py picks XLA CPU's convolution kernels before JAX starts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcolor.runtime import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiles a small conv's weight gradient (the slow case on YNNPACK) in a
# fresh process and prints which kernels XLA gave the convolutions.
PROBE = """
import os, sys
from jaxcolor.runtime import xla_flags
try:
  print('FLAGS', xla_flags.apply(sys.argv[1]))
except ValueError as e:
  print('ERROR', e); sys.exit(0)
import jax, jax.numpy as jnp
f = lambda w, x: jnp.sum(jax.lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
w = jax.random.normal(jax.random.key(0), (3, 3, 64, 64)) / 24
x = jax.random.normal(jax.random.key(1), (2, 16, 16, 64))
compiled = jax.jit(jax.grad(f)).lower(w, x).compile()
text = compiled.as_text()
print('GRAD', float(jnp.sum(jnp.abs(compiled(w, x)))))
# The program has only convolutions: any YNNPACK fusion is one of them.
print('YNN_CONV', any(' fusion(' in l and 'ynn_fusion' in l.split('=')[0]
                      for l in text.splitlines()))
print('DEVICES', jax.device_count())
# Two matmuls and their sum: one oneDNN fusion of all three would not
# compile in oneDNN, and the process would die.
a = jax.random.normal(jax.random.key(2), (512, 256))
mm = jax.jit(lambda a: a @ a.T + (2 * a) @ a.T).lower(a).compile()
print('ONEDNN_DOT', '"kind":"__onednn_fusion"' in mm.as_text())
print('SUM', float(jnp.sum(mm(a))))
os.environ['XLA_FLAGS'] = ''
try:
  xla_flags.apply('eigen')
  print('LATE ok')
except RuntimeError as e:
  print('LATE', e)
"""


def _probe(choice, env_flags):
  env = dict(os.environ, XLA_FLAGS=env_flags, JAX_PLATFORMS='cpu',
             PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, '-c', PROBE, choice], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return dict(line.split(' ', 1) for line in out.stdout.splitlines())


EIGEN = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
ONEDNN = ['--xla_cpu_use_onednn=true',
          '--xla_cpu_experimental_onednn_fusion_type=individual_dot']


def test_cpu_flags_and_bad_value():
  assert xla_flags.cpu_flags('eigen') == [EIGEN]
  assert xla_flags.cpu_flags('onednn') == [EIGEN] + ONEDNN
  assert xla_flags.cpu_flags('default') == []
  for bad in ('fastest', 'auto'):  # 'auto' is resolved first
    with pytest.raises(ValueError, match='xla_cpu_convolutions'):
      xla_flags.cpu_flags(bad)
  with pytest.raises(ValueError, match='xla_cpu_convolutions'):
    xla_flags.resolve('fastest')


# /proc/cpuinfo's lines as Linux writes them (abridged) on three CPU kinds.
CPUINFO = {
    'xeon_amx': 'model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: '
                'fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n',
    'zen4': 'model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f '
            'avx512_bf16\n',
    'zen3': 'model name\t: AMD EPYC 7R13\nflags\t\t: fpu avx2 fma\n',
}


@pytest.mark.parametrize('cpu', ['xeon_amx', 'zen4', 'zen3', 'missing'])
def test_auto_picks_by_the_cpus_instruction_set_and_dtype(cpu, tmp_path):
  path = tmp_path / 'cpuinfo'
  if cpu != 'missing':  # another system: no /proc/cpuinfo
    path.write_text(CPUINFO[cpu] * 2)  # one block per core
  features = xla_flags.cpu_features(str(path))
  assert ('amx_bf16' in features) == (cpu == 'xeon_amx')
  # No CPU kind measured so far runs another choice faster than 'eigen'.
  for dtype in ('float32', 'bfloat16'):
    assert xla_flags.resolve('auto', dtype, features) == 'eigen'
  rules = {('bfloat16', 'amx_bf16'): 'onednn'}   # what a measurement adds
  want = 'onednn' if cpu == 'xeon_amx' else 'eigen'
  assert xla_flags.resolve('auto', 'bfloat16', features, rules) == want
  assert xla_flags.resolve('auto', 'float32', features, rules) == 'eigen'
  for choice in ('eigen', 'onednn', 'default'):  # a choice made is kept
    assert xla_flags.resolve(choice, 'bfloat16', features, rules) == choice


def test_this_machines_cpu_is_read():
  # Linux lists its CPU's flags there; the test machines run Linux.
  assert xla_flags.cpu_features()


def test_eigen_keeps_convolutions_off_ynnpack_and_other_flags():
  got = _probe('eigen', '--xla_force_host_platform_device_count=2')
  assert got['FLAGS'] == ('--xla_force_host_platform_device_count=2 '
                          '--xla_cpu_experimental_ynn_fusion_type='
                          '-individual_convolution')
  assert got['YNN_CONV'] == 'False'
  assert got['DEVICES'] == '2'          # the user's flags still apply
  # Once a backend has started, XLA would ignore new flags: apply refuses.
  assert got['LATE'].startswith('xla_flags.apply must run before')


def test_onednn_puts_matmuls_on_onednn_and_computes_what_eigen_does():
  eigen = _probe('eigen', '')
  onednn = _probe('onednn', '')
  assert onednn['FLAGS'] == ' '.join([EIGEN] + ONEDNN)
  assert onednn['YNN_CONV'] == 'False'
  # float32 matmuls go to oneDNN on every x86 CPU; without the fusion-type
  # flag (the choice's flags before) nothing does, in jaxlib 0.10.
  assert (eigen['ONEDNN_DOT'], onednn['ONEDNN_DOT']) == ('False', 'True')
  assert _probe('eigen', ONEDNN[0])['ONEDNN_DOT'] == 'False'
  np.testing.assert_allclose(float(onednn['SUM']), float(eigen['SUM']),
                             rtol=1e-4)
  np.testing.assert_allclose(float(onednn['GRAD']), float(eigen['GRAD']),
                             rtol=1e-4)


def test_default_leaves_xla_its_choice():
  got = _probe('default', '')
  assert got['FLAGS'] == ''
  # jaxlib 0.10 runs these convolutions in YNNPACK fusions by default: the
  # reason 'eigen' exists (if this changes, re-measure docs/benchmarks.md).
  assert got['YNN_CONV'] == 'True'


def test_a_flag_the_user_set_wins():
  mine = '--xla_cpu_experimental_ynn_fusion_type=-individual_dot'
  got = _probe('eigen', mine)
  assert got['FLAGS'] == mine
  assert got['YNN_CONV'] == 'True'


def test_bad_value_is_an_error_before_jax_starts():
  got = _probe('fastest', '')
  assert 'xla_cpu_convolutions' in got['ERROR']


def test_cpu_matmul_names_where_each_dtype_form_runs(tmp_path, capsys):
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  try:
    import cpu_matmul  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  out = tmp_path / 'mm.json'
  assert cpu_matmul.main(['--m', '96', '--k', '64', '--n', '32',
                          '--repeats', '1', '--json', str(out)]) == 0
  rows = {r['form']: r for r in json.loads(out.read_text())['rows']}
  assert all(r['gflops'] > 0 for r in rows.values())
  # jaxlib 0.10: a bfloat16 matmul with a bfloat16 result is computed in
  # float32; with a float32 result it stays bfloat16, on YNNPACK (the form
  # conv_impl='mm' uses). If this changes, re-measure docs/benchmarks.md.
  assert (rows['float32']['library'], rows['float32']['converted']) == (
      'ynn', False)
  assert rows['bf16->bf16']['converted']
  assert (rows['bf16->f32']['library'], rows['bf16->f32']['converted']) == (
      'ynn', False)
  report = json.loads(out.read_text())
  assert report['bf16_f32_over_float32'] == pytest.approx(
      rows['bf16->f32']['gflops'] / rows['float32']['gflops'])
  assert report['cpu']['model_name']
  printed = capsys.readouterr().out
  assert 'bf16->f32' in printed and 'CPU: ' in printed
  assert f'{report["bf16_f32_over_float32"]:.2f}x' in printed
  with pytest.raises(SystemExit):
    cpu_matmul.main(['--forms', 'int8'])
