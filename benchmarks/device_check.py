"""One-shot device check: what a machine with a GPU or TPU does with jaxcolor.

  python benchmarks/device_check.py --out OUT [--quick] [--budget_s 480]

In at most `--budget_s` seconds (default 8 minutes) it
  1. prints and records the device (jax.devices(), nvidia-smi where present);
  2. runs the tests that exercise the compiled steps on that device
     (tests/test_grad_accum.py, tests/test_speedups.py), JAX_PLATFORMS left
     to the machine;
  3. runs `main.py --mode=benchmark` over a matrix, most important rows first
     (the paper's model, SCGAN and CIC at 64 and 256 px; float32 and
     bfloat16; per-device batches 64, 256, 1024 while the last one fitted;
     steps_per_call 1 and 8; the feature cache on and off; the step fed by
     Grain from prepared records), each row with its own time limit; rows
     that do not fit in memory or in the budget are listed as such; the
     paper's rows trace their last timed call and say where its time goes,
     by XLA op (jaxcolor/runtime/op_profile.py);
  4. runs the PyTorch peer (`$PEER_DIR`, default ../shared/peers/torch_ref;
     copy it beside the checkout where ../shared does not travel) with and
     without --bf16 on the same batches, where torch imports;
  5. writes OUT/device_check.json and OUT/device_check.md (one table).

`--quick` shrinks everything to tiny models and a few rows on any device,
in seconds: the suite runs it on the CPU (tests/test_device_check.py).
"""

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jaxcolor.runtime import op_profile  # pylint: disable=wrong-import-position
TESTS = ('tests/test_grad_accum.py', 'tests/test_speedups.py')
PHOTOS = os.path.join(ROOT, 'jaxcolor', 'data', 'samples')


@dataclasses.dataclass(frozen=True)
class Row:
  """One benchmark run: a config and its overrides."""
  name: str
  config: str
  overrides: tuple[str, ...] = ()
  per_device_batch: int = 64
  what: str = 'step'
  profile: bool = False  # trace one timed call: where its time goes, by op


def _matrix(quick: bool, devices: int) -> list[Row]:
  """The rows, most important first."""
  if quick:  # tiny models on any device: the script's own test
    tiny = ('--config.model.g_features=(8,8,16,16,16,16,16)',
            '--config.model.d_features=(8,8,16,16,16,1)',
            '--config.model.use_resnet=False',
            '--config.model.conv_impl=xla')  # compiles fastest at these widths
    return [Row('paper 64px f32 tiny', 'configs/default.py', tiny, 2,
                profile=True),
            Row('paper 64px f32 tiny, records (Grain)', 'configs/default.py',
                tiny, 2, 'e2e')]
  del devices
  # At 256 px each family runs its own 256-px config (the proposed model:
  # the paper's network, its sizes derived from data.image_size); the
  # float32 rows also fit XLA's memory estimate to 16, 40 and 80 GiB.
  own_256 = {'scgan': 'configs/scgan_baseline.py:256',
             'cic': 'configs/cic_baseline.py:256'}
  fit = ('--config.benchmark.memory_budgets_gib=(16,40,80)',)
  rows = []
  for size in (64, 256):
    for dtype in ('float32', 'bfloat16'):
      for name, config in (('paper', 'configs/default.py'),
                           ('scgan', 'configs/scgan_baseline.py'),
                           ('cic', 'configs/cic_baseline.py')):
        extra = (f'--config.data.image_size={size}',)
        if size == 256:
          config = own_256.get(name, config)
          extra = (() if name in own_256 else extra) + (
              fit if dtype == 'float32' else ())
        rows.append(Row(f'{name} {size}px {dtype}', config,
                        (f'--config.dtype={dtype}',) + extra,
                        profile=name == 'paper'))
  for dtype in ('float32', 'bfloat16'):
    for batch in (256, 1024):
      rows.append(Row(f'paper 64px {dtype} batch {batch}',
                      'configs/default.py', (f'--config.dtype={dtype}',),
                      batch))
  rows += [
      Row('paper 64px bfloat16, 8 steps/call', 'configs/default.py',
          ('--config.dtype=bfloat16', '--config.steps_per_call=8',
           '--config.log_every_steps=56')),
      Row('paper 64px bfloat16, feature cache', 'configs/default.py',
          ('--config.dtype=bfloat16', '--config.data.use_feature_cache=True')),
      Row('paper 64px bfloat16, records (Grain)', 'configs/default.py',
          ('--config.dtype=bfloat16',), 64, 'e2e'),
      Row('recipe 256px bfloat16', 'configs/recipe.py:256',
          ('--config.dtype=bfloat16',)),
  ]
  return rows


def _device() -> dict:
  """The device as JAX sees it, in a child process (so this one stays
  light), and nvidia-smi's line where there is one."""
  code = ('import jax, json; d = jax.devices(); print(json.dumps({'
          '"backend": jax.default_backend(), "count": len(d), '
          '"kind": d[0].device_kind, "jax": jax.__version__}))')
  info = {}
  try:
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    info = json.loads(out.stdout.strip().splitlines()[-1])
  except (subprocess.SubprocessError, ValueError, IndexError) as e:
    info = {'error': f'{type(e).__name__}: {e}'}
  if shutil.which('nvidia-smi'):
    smi = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
         '--format=csv,noheader'], capture_output=True, text=True)
    info['nvidia_smi'] = smi.stdout.strip()
  return info


def _run_tests(deadline: float, quick: bool) -> dict:
  if quick:
    return {'skipped': 'quick mode (the suite runs these itself)'}
  env = dict(os.environ)
  env.setdefault('JAX_PLATFORMS', '')  # the machine's device, not the CPU
  t = time.time()
  try:
    out = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', *TESTS], cwd=ROOT, env=env,
        capture_output=True, text=True,
        timeout=max(10.0, min(240.0, deadline - time.time())))
    tail = out.stdout.strip().splitlines()[-1:] or ['']
    return {'returncode': out.returncode, 'summary': tail[0],
            'seconds': time.time() - t}
  except subprocess.TimeoutExpired:
    return {'returncode': None, 'summary': 'timed out',
            'seconds': time.time() - t}


def _benchmark(row: Row, devices: int, work: str, timeout: float,
               quick: bool) -> dict:
  """One row through `main.py --mode=benchmark`; its JSON figures."""
  key = abs(hash(row))
  out = os.path.join(work, f'{key}.json')
  steps = ('1', '0') if quick else ('5', '2')
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=benchmark',
         f'--config={os.path.join(ROOT, row.config)}',
         f'--config.benchmark.what={row.what}',
         f'--config.benchmark.num_steps={steps[0]}',
         f'--config.benchmark.warmup_steps={steps[1]}',
         f'--config.data.batch_size={row.per_device_batch * devices}',
         f'--config.benchmark.output_json={out}', *row.overrides]
  if row.profile:  # the last timed call, into a folder of its own
    cmd += [f'--config.profile_steps=({steps[0]},1)',
            f'--workdir={os.path.join(work, f"profile_{key}")}']
  if row.what == 'e2e':
    cmd += [f'--config.data.train_dir={PHOTOS}',
            '--config.benchmark.num_batches=2',
            '--config.benchmark.warmup_batches=1']
  t = time.time()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=timeout, cwd=work)
  except subprocess.TimeoutExpired:
    return {'status': f'not finished in {timeout:.0f} s'}
  result = {'seconds': time.time() - t}
  if proc.returncode != 0:
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    reason = lines[-1] if lines else f'exit {proc.returncode}'
    oom = any(s in proc.stderr for s in ('RESOURCE_EXHAUSTED',
                                         'out of memory', 'OOM'))
    return {**result, 'status': 'out of memory' if oom else 'failed',
            'reason': reason[-300:]}
  with open(out) as f:
    report = json.load(f)
  section = report.get('step') or report
  if row.what == 'e2e':
    e2e = report.get('e2e', {})
    section = e2e.get('records') or e2e.get('folder') or {}
  keep = ('images_per_s', 'images_per_s_per_device', 'step_s_median',
          'compile_s', 'flops_per_image', 'achieved_tflops', 'mfu')
  step = report.get('step') or {}
  return {**result, 'status': 'ok', 'device_kind': report.get('device_kind'),
          'memory_bytes': step.get('device_memory_bytes'),
          'max_batch_per_device_by_gib': step.get(
              'max_batch_per_device_by_gib'),
          **{k: section.get(k) for k in keep},
          **({'ops': step.get('ops')} if row.profile else {})}


def _peer(deadline: float, quick: bool) -> list[dict]:
  """The PyTorch peer's step on the same batches, float32 and --bf16."""
  peer = os.environ.get('PEER_DIR', os.path.join(ROOT, '..', 'shared',
                                                 'peers', 'torch_ref'))
  if quick:
    return [{'status': 'skipped in quick mode'}]
  if not os.path.isfile(os.path.join(peer, 'bench.py')):
    return [{'status': f'no peer at {peer} (set PEER_DIR)'}]
  probe = subprocess.run([sys.executable, '-c', 'import torch; '
                          'print(torch.cuda.is_available())'],
                         capture_output=True, text=True)
  if probe.returncode != 0:
    return [{'status': 'torch does not import here'}]
  device = 'cuda' if probe.stdout.strip() == 'True' else 'cpu'
  rows = []
  for batch in (64, 256):
    for bf16 in (False, True):
      left = deadline - time.time()
      name = f'peer {device} batch {batch}' + (' --bf16' if bf16 else '')
      if left < 20:
        rows.append({'name': name, 'status': 'no time left'})
        continue
      cmd = [sys.executable, 'bench.py', '--batch', str(batch), '--steps',
             '5', '--warmup', '2', '--device', device] + (
                 ['--bf16'] if bf16 else [])
      try:
        proc = subprocess.run(cmd, cwd=peer, capture_output=True, text=True,
                              timeout=min(120.0, left))
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout else ''
        rows.append({'name': name, 'status': 'ok' if proc.returncode == 0
                     else 'failed', **(json.loads(line) if line.startswith(
                         '{') else {'reason': proc.stderr[-300:]})})
      except subprocess.TimeoutExpired:
        rows.append({'name': name, 'status': 'timed out'})
  return rows


def _fmt(value, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def markdown(result: dict) -> str:
  """The result as one markdown table (plus the device and tests lines)."""
  d = result['device']
  lines = [f'# jaxcolor device check, {result["date"]}', '',
           f'Device: {d.get("count", "?")} x {d.get("kind", "?")} '
           f'({d.get("backend", "?")}, JAX {d.get("jax", "?")})'
           + (f'; nvidia-smi: {d["nvidia_smi"]}' if d.get('nvidia_smi')
              else ''), '',
           f'Tests: {result["tests"].get("summary") or result["tests"]}', '',
           '| run | per-device batch | images/s | ms/step | compile s | '
           'GFLOP/image | TFLOP/s | MFU | device memory GB | batch/device '
           'in 16 / 40 / 80 GiB | status |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: '
           '| ---: | --- |']
  for r in result['rows']:
    flops = r.get('flops_per_image')
    mem = r.get('memory_bytes')
    step = r.get('step_s_median')
    fits = ' / '.join(
        str(n) for n in (r.get('max_batch_per_device_by_gib') or {}).values())
    lines.append(
        f'| {r["name"]} | {r["per_device_batch"]} | '
        f'{_fmt(r.get("images_per_s"), ".1f")} | '
        f'{_fmt(step * 1e3 if step else None, ".1f")} | '
        f'{_fmt(r.get("compile_s"), ".1f")} | '
        f'{_fmt(flops / 1e9 if flops else None, ".2f")} | '
        f'{_fmt(r.get("achieved_tflops"), ".1f")} | '
        f'{_fmt(r.get("mfu"), ".3f")} | '
        f'{_fmt(mem / 1e9 if mem else None, ".2f")} | '
        f'{fits or "-"} | '
        f'{r["status"]}{": " + r["reason"] if r.get("reason") else ""} |')
  for p in result['peer']:
    ips = p.get('images_per_sec')
    lines.append(f'| {p.get("name", "peer")} | {p.get("batch", "-")} | '
                 f'{_fmt(ips, ".1f")} | | | | | | | | {p["status"]} |')
  for r in result['rows']:
    if r.get('ops'):
      lines += ['', f'Where the time of "{r["name"]}" goes (one traced call):',
                '', '```', op_profile.table(r['ops']), '```']
  lines += ['', f'Total {result["seconds"]:.0f} s.']
  return '\n'.join(lines) + '\n'


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--budget_s', type=float, default=480.0)
  args = parser.parse_args(argv)
  start = time.time()
  deadline = start + args.budget_s
  os.makedirs(args.out, exist_ok=True)
  device = _device()
  print(f'device: {device}', flush=True)
  devices = int(device.get('count', 1) or 1)
  tests = _run_tests(start + 0.3 * args.budget_s, args.quick)
  print(f'tests: {tests}', flush=True)
  rows, too_big = [], set()
  peer_share = 0.0 if args.quick else 0.15 * args.budget_s
  with tempfile.TemporaryDirectory() as work:
    for row in _matrix(args.quick, devices):
      left = deadline - peer_share - time.time()
      key = (row.config, row.overrides)
      if key in too_big:
        r = {'status': 'skipped: a smaller batch ran out of memory'}
      elif left < 15:
        r = {'status': 'not run: out of time'}
      else:
        r = _benchmark(row, devices, work, min(left, 150.0), args.quick)
        if r['status'] == 'out of memory':
          too_big.add(key)
      r = {'name': row.name, 'per_device_batch': row.per_device_batch,
           'config': row.config, 'overrides': list(row.overrides),
           'what': row.what, **r}
      print(json.dumps(r), flush=True)
      rows.append(r)
  peer = _peer(deadline, args.quick)
  result = {'date': datetime.date.today().isoformat(), 'device': device,
            'tests': tests, 'rows': rows, 'peer': peer, 'quick': args.quick,
            'seconds': time.time() - start}
  with open(os.path.join(args.out, 'device_check.json'), 'w') as f:
    json.dump(result, f, indent=1)
  table = markdown(result)
  with open(os.path.join(args.out, 'device_check.md'), 'w') as f:
    f.write(table)
  print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
