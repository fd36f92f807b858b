"""benchmarks/paired_step.py: two settings of the step, one process, call by call."""

import json
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_paired(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'paired_step.py'),
       *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_times_both_settings_alternately_and_pairs_them(tmp_path):
  out = tmp_path / 'paired.json'
  result = run_paired(
      '--config', 'tiny', '--set', 'data.batch_size=4',
      '--b', 'donate_state=False',
      '--b_xla', 'xla_cpu_enable_fast_min_max=false',
      '--rounds', '3', '--json', str(out))
  assert result.returncode == 0, result.stderr
  row = json.loads(out.read_text())
  a, b = row['a']['seconds'], row['b']['seconds']
  assert len(a) == len(b) == 3 and min(a + b) > 0
  diffs = [tb - ta for ta, tb in zip(a, b)]
  paired = row['b_minus_a_s']
  assert paired['median'] == pytest.approx(statistics.median(diffs))
  assert paired['mean'] == pytest.approx(statistics.mean(diffs))
  assert paired['b_faster_rounds'] == sum(d < 0 for d in diffs)
  assert row['a']['median_s'] == pytest.approx(statistics.median(a))
  assert row['b_overrides'] == ['donate_state=False']
  assert row['b_xla'] == {'xla_cpu_enable_fast_min_max': False}
  assert row['batch_size'] == 4
  assert 'b - a per round: median' in result.stdout


@pytest.mark.parametrize('args,expected', [
    (('--config', 'nope'), "--config 'nope': no configs/nope.py"),
    (('--config', '../main'), 'expected the name of a file in configs/'),
    (('--set', 'data.batchsize=3'), "'data.batchsize': no such config key"),
    (('--b', 'donate_state=maybe'), "donate_state='maybe': expected true or false"),
    (('--a', 'data.batch_size=two'), "data.batch_size='two': expected an integer"),
    (('--set', 'data.batch_size=0'), 'config.data.batch_size=0'),
    (('--b_xla', 'xla_cpu_enable_fast_min_max'), 'expected KEY=VALUE'),
    (('--rounds', '0'), '--rounds must be at least 1'),
    # conftest's 4 CPU devices
    (('--set', 'data.batch_size=2'), 'must split evenly over'),
    (('--config', 'default'), 'needs ImageNet weights'),
    (('--json', '/proc/no/such/out.json'), 'is not a writable folder'),
    (('--b_xla', 'xla_no_such_option=1'),
     "No such compile option: 'xla_no_such_option'"),
])
def test_bad_arguments_fail_with_one_line(args, expected):
  result = run_paired('--config', 'tiny', *args)
  assert result.returncode == 2
  assert expected in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('paired_step: ') and expected in lines[-1]
  assert sum(line.startswith('paired_step: ') for line in lines) == 1
