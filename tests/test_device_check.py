"""benchmarks/device_check.sh, shrunk to seconds with --quick, on the CPU."""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_device_check_runs_to_its_table(tmp_path):
  out = tmp_path / 'check'
  env = {**os.environ, 'PY': __import__('sys').executable}
  proc = subprocess.run(
      ['bash', os.path.join(ROOT, 'benchmarks', 'device_check.sh'), str(out),
       '--quick'], capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  with open(out / 'device_check.json') as f:
    result = json.load(f)
  assert result['device']['backend'] == 'cpu'
  assert [r['status'] for r in result['rows']] == ['ok', 'ok'], result['rows']
  for row in result['rows']:
    assert row['images_per_s'] > 0
  table = (out / 'device_check.md').read_text()
  assert '| paper 64px f32 tiny | 2 |' in table
  # The paper's row traced its timed call: where its time went, by op.
  ops = result['rows'][0]['ops']
  assert ops['ms_per_call'] > 0 and 'convolution' in ops['by_kind']
  assert 'Where the time of "paper 64px f32 tiny" goes' in table
  assert 'by kind: convolution' in table
  assert (out / 'device_check.log').stat().st_size > 0
