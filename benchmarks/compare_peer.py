"""Training-step throughput of jaxcolor vs the PyTorch peer, in one run.

  python benchmarks/compare_peer.py --peer_dir PATH/torch_ref \
      --peer_python PATH/bin/python [--batch 64] [--threads 2] [--repeats 2]
      [--peer_timeout 600] [--profile]

Runs, alternating (peer, jaxcolor variants, peer, ...) `--repeats` times on
this machine with the same batch and thread count:

- the peer's `bench.py --channels_last` in float32 and with `--bf16`
  (torch.autocast to bfloat16 around the step, parameters and optimiser
  state in float32: what jaxcolor's `config.dtype='bfloat16'` means); add
  `--peer_nchw` to also run its NCHW eager mode, `--no_peer_bf16` to skip
  the autocast run;
- jaxcolor's `python main.py --mode=benchmark --config.benchmark.what=step`
  (the trainer's compiled step on synthetic data) for each variant below.

Variants: 'same' is the peer's computation in float32 (G forward reused for
the G update, ResNet run every step); 'same_ynnpack' the same with XLA's
default CPU convolution kernels (YNNPACK) instead of Eigen's; 'phase' the
same with the previous convolution forms; the others add the speed-ups
(ResNet feature cache, bfloat16, several steps per compiled call);
'same_bf16' is 'same' in bfloat16, the peer's `--bf16` step (both with
`xla_cpu_convolutions='auto'`); 'auto' and 'auto_bf16' are the peer's
computation with jaxcolor's defaults (`conv_impl='auto'`: the form its
measured rules pick on this CPU); 'shard_map' and 'shard_map_bf16' the
same compiled with `parallel='shard_map'` (whose `optim.adam_impl='auto'`
updates in place on the kernel library). `--variants cpu_kernels` sweeps what
'auto' and conv_impl choose between on a new CPU kind: each kernel choice
('eigen', 'onednn', 'ynnpack') and, with oneDNN, each convolution form, in
both dtypes (names ending in '_bf16' run bfloat16), and conv_impl 'mm'
(every convolution a matmul, the form whose bfloat16 matmuls XLA CPU
runs in bfloat16). Each row is
compared with the peer's best float32 run and, like with like, with the
peer's run of its own dtype. Also names the CPU (lscpu's model name and
its AVX-512/AMX bfloat16 flags), prints FLOPs per image of both sides (the
peer's flops.py; jaxcolor: the same analytic count over its own modules)
and checks they agree within 1 %. With `--profile`, each variant's first
run traces its last timed call and the report ends with where that call's
time went, by XLA op (kind, library, pass, layer, GFLOP/s;
jaxcolor/runtime/op_profile.py). Writes everything as JSON.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jaxcolor.runtime import files  # pylint: disable=wrong-import-position
from jaxcolor.runtime import op_profile  # pylint: disable=wrong-import-position
BASE = ['--config.model.require_resnet18_weights=False',
        '--config.model.reuse_generator_forward=True']
VARIANTS = {
    'same': ['--config.model.conv_impl=fast'],
    'same_ynnpack': ['--config.model.conv_impl=fast',
                     '--config.xla_cpu_convolutions=default'],
    'same_bf16': ['--config.model.conv_impl=fast', '--config.dtype=bfloat16'],
    'auto': [],
    'auto_bf16': ['--config.dtype=bfloat16'],
    'shard_map': ['--config.parallel=shard_map'],
    'shard_map_bf16': ['--config.parallel=shard_map',
                       '--config.dtype=bfloat16'],
    'phase': ['--config.model.conv_impl=phase'],
    'cache': ['--config.model.conv_impl=fast',
              '--config.data.use_feature_cache=True'],
    'cache_bf16': ['--config.model.conv_impl=fast',
                   '--config.data.use_feature_cache=True',
                   '--config.dtype=bfloat16'],
    'cache_k4': ['--config.model.conv_impl=fast',
                 '--config.data.use_feature_cache=True',
                 '--config.steps_per_call=4',
                 '--config.log_every_steps=100'],
}
# The CPU kernels and convolution forms `xla_cpu_convolutions='auto'` and
# conv_impl choose between, each pinned, for a sweep on a new CPU kind
# (`--variants cpu_kernels`).
KERNELS = {
    'eigen': '--config.xla_cpu_convolutions=eigen',
    'onednn': '--config.xla_cpu_convolutions=onednn',
    'ynnpack': '--config.xla_cpu_convolutions=default',
}


def _cpu_kernel_variants() -> dict[str, list[str]]:
  """'eigen', 'onednn', 'ynnpack' (conv_impl 'fast'), 'phase_onednn',
  'xla_onednn', 'mm' (every convolution a matmul; its bfloat16 matmuls run
  on YNNPACK's bfloat16 kernels), 'dnnl' (oneDNN's convolutions as custom
  calls), 'winograd' ('dnnl' with the wide stride-1 convolutions by
  Winograd's method), each also in bfloat16 ('..._bf16'), and
  'mm_onednn' (float32 matmuls on oneDNN)."""
  variants = {}
  for dtype, suffix in (('float32', ''), ('bfloat16', '_bf16')):
    for kernel, flag in KERNELS.items():
      variants[kernel + suffix] = ['--config.model.conv_impl=fast', flag,
                                   f'--config.dtype={dtype}']
    for impl in ('phase', 'xla'):
      variants[f'{impl}_onednn{suffix}'] = [
          f'--config.model.conv_impl={impl}', KERNELS['onednn'],
          f'--config.dtype={dtype}']
    variants['mm' + suffix] = ['--config.model.conv_impl=mm', KERNELS['eigen'],
                               f'--config.dtype={dtype}']
    for impl in ('dnnl', 'winograd'):
      variants[impl + suffix] = [f'--config.model.conv_impl={impl}',
                                 f'--config.dtype={dtype}']
  # oneDNN takes float32 matmuls only: bfloat16 ones with a float32 result
  # stay on YNNPACK, so 'mm_onednn_bf16' would run as 'mm_bf16'.
  variants['mm_onednn'] = ['--config.model.conv_impl=mm', KERNELS['onednn'],
                           '--config.dtype=float32']
  return variants


VARIANTS.update(_cpu_kernel_variants())
CPU_KERNELS = ('same', 'same_bf16', *_cpu_kernel_variants())
SPEEDUPS = ('cache', 'cache_bf16', 'cache_k4')


def _pin(cmd, threads):
  """Runs on `threads` cores where the machine has more (XLA uses them all)."""
  if (os.cpu_count() or 1) > threads and shutil.which('taskset'):
    return ['taskset', '-c', f'0-{threads - 1}'] + cmd
  return cmd


def _env(threads):
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env['OMP_NUM_THREADS'] = str(threads)
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


CPU_FLAGS = ('avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile')


def cpu_name() -> dict:
  """lscpu's model name and the CPU's bfloat16-relevant flags."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True,
                         check=False).stdout
  except OSError:
    out = ''
  fields = dict(line.split(':', 1) for line in out.splitlines() if ':' in line)
  flags = fields.get('Flags', '').split()
  return {'model_name': fields.get('Model name', '?').strip(),
          'flags': [f for f in CPU_FLAGS if f in flags]}


def _cpu_jiffies():
  """(busy, steal) clock ticks of all CPUs so far (/proc/stat), or None."""
  try:
    with open('/proc/stat') as f:
      ticks = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  # user nice system idle iowait irq softirq steal ...
  return sum(ticks[0:3]) + sum(ticks[5:7]), (ticks[7] if len(ticks) > 7
                                              else 0)


def _with_machine_load(run):
  """run()'s row plus what else the machine did while it ran, in cores
  over its wall time: `machine_other_cores` (CPU time of processes other
  than the run's) and `machine_steal_cores` (taken by the hypervisor). A
  row with either above ~0.1 was measured on a busy machine."""
  hz = os.sysconf('SC_CLK_TCK')
  before, t = _cpu_jiffies(), time.perf_counter()
  own = resource.getrusage(resource.RUSAGE_CHILDREN)
  row = run()
  wall = time.perf_counter() - t
  after = _cpu_jiffies()
  used = resource.getrusage(resource.RUSAGE_CHILDREN)
  own_s = (used.ru_utime + used.ru_stime) - (own.ru_utime + own.ru_stime)
  if before and after and wall > 0:
    row['machine_other_cores'] = round(
        max(0.0, (after[0] - before[0]) / hz - own_s) / wall, 3)
    row['machine_steal_cores'] = round((after[1] - before[1]) / hz / wall, 3)
  return row


def _last_json(text):
  for line in reversed(text.strip().splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  raise ValueError(f'no JSON line in output:\n{text[-2000:]}')


def run_peer(a, extra):
  cmd = [a.peer_python, os.path.join(a.peer_dir, 'bench.py'), '--batch',
         str(a.batch), '--threads', str(a.threads), '--steps',
         str(a.peer_steps), '--warmup', '2', *extra]
  p = subprocess.run(_pin(cmd, a.threads), capture_output=True, text=True,
                     env=_env(a.threads), check=True, timeout=a.peer_timeout)
  return _last_json(p.stdout)


def run_jax(a, variant, tmp, profile=False):
  """One main.py benchmark of `variant`; with `profile`, its last timed
  call is traced and the row holds where that call's time went ('ops')."""
  out = os.path.join(tmp, f'{variant}.json')
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=benchmark',
         '--config=' + os.path.join(ROOT, 'configs', 'default.py'),
         '--config.benchmark.what=step',
         f'--config.data.batch_size={a.batch}',
         f'--config.data.eval_batch_size={a.batch}',
         f'--config.benchmark.num_steps={a.jax_steps}',
         '--config.benchmark.warmup_steps=1',
         f'--config.benchmark.output_json={out}', *BASE, *VARIANTS[variant]]
  if profile:
    cmd += [f'--config.profile_steps=({a.jax_steps},1)',
            f'--workdir={os.path.join(tmp, variant)}']
  p = subprocess.run(_pin(cmd, a.threads), capture_output=True, text=True,
                     env=_env(a.threads), cwd=tmp)
  if p.returncode:
    return {'error': p.stderr.strip().splitlines()[-1:] or ['failed']}
  with open(out) as f:
    report = json.load(f)
  step = report.get('step', report)
  return {'images_per_sec': step['images_per_s'],
          'step_s_median': step['train_step_s'],
          'compile_s': step.get('compile_s', report.get('compile_s')),
          'xla_flops_per_image': step.get('flops_per_image'),
          **({'ops': step.get('ops')} if profile else {})}


def jax_flops(batch):
  """Analytic GFLOP per image (2 x MACs, padded taps counted, as the peer)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from jaxcolor import models  # pylint: disable=g-import-not-at-top
  from jaxcolor.models import conv_impl  # pylint: disable=g-import-not-at-top
  from jaxcolor.models import resnet18  # pylint: disable=g-import-not-at-top

  mc = models.resolve_sizes(default.get_config().model, 64)
  m = models.build_models(mc)
  key = jax.random.key(0, impl='rbg')

  def convs(module, *args):
    rows = []

    def count(next_fun, call_args, kwargs, context):
      out = next_fun(*call_args, **kwargs)
      mod = context.module
      if isinstance(mod, (nn.Conv, conv_impl.Conv, conv_impl.ConvTranspose)):
        k = mod.kernel_size
        taps = k * k if isinstance(k, int) else int(np.prod(k))
        where = (call_args[0] if isinstance(mod, conv_impl.ConvTranspose)
                 else out)
        rows.append(2 * taps * call_args[0].shape[-1] * mod.features *
                    int(np.prod(where.shape[1:-1])))
      return out

    params = jax.eval_shape(module.init, key, *args)
    with nn.intercept_methods(count):
      jax.eval_shape(module.apply, params, *args)
    return rows

  x = jnp.zeros((1, 64, 64, 2))
  feats = jnp.zeros((1, mc.fusion_size, mc.fusion_size, 512))
  g = convs(m.generator, x, feats)
  d = convs(m.critic, jnp.zeros((1, 64, 64, 4)))
  r = convs(m.resnet, jnp.zeros((1, mc.resnet_input_size,
                                 mc.resnet_input_size, 3)))
  gf, df, rf = sum(g), sum(d), sum(r)
  # The peer's step (flops.py, reuse): R + G + (2G - g1) + 2D + 2(2D - d1)
  # + D + D.
  step = rf + gf + (2 * gf - g[0]) + 2 * df + 2 * (2 * df - d[0]) + 2 * df
  del batch, resnet18
  return {'G_fwd_gflop_per_image': gf / 1e9, 'D_fwd_gflop_per_image': df / 1e9,
          'resnet18_fwd_gflop_per_image': rf / 1e9,
          'step_gflop_per_image': step / 1e9,
          'step_gflop_per_image_cached': (step - rf) / 1e9}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--peer_dir', required=True)
  p.add_argument('--peer_python', required=True)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--variants',
                 default='same,same_bf16,same_ynnpack,' + ','.join(SPEEDUPS))
  p.add_argument('--peer_nchw', action='store_true')
  p.add_argument('--no_peer_bf16', action='store_true')
  p.add_argument('--peer_steps', type=int, default=5)
  # Without bfloat16 units (e.g. a Zen 3) the peer's --bf16 step takes
  # minutes: such a run is recorded as timed out instead of waited for.
  p.add_argument('--peer_timeout', type=float, default=600.0)
  p.add_argument('--jax_steps', type=int, default=5)
  p.add_argument('--profile', action='store_true',
                 help="trace each variant's last timed call in its first "
                 'run and print where its time goes, by XLA op')
  p.add_argument('--json', default='compare_peer.json')
  a = p.parse_args()
  variants = (list(CPU_KERNELS) if a.variants == 'cpu_kernels'
              else a.variants.split(','))
  for v in variants:
    if v not in VARIANTS:
      p.error(f'unknown variant {v!r}; known: {", ".join(VARIANTS)}')

  peer_flops = _last_json(subprocess.run(
      [a.peer_python, os.path.join(a.peer_dir, 'flops.py'), '--quiet',
       '--batch', str(a.batch)], capture_output=True, text=True, check=True,
      env=_env(a.threads)).stdout)
  ours = jax_flops(a.batch)
  flops_rows = []
  for key in ('G_fwd_gflop_per_image', 'D_fwd_gflop_per_image',
              'resnet18_fwd_gflop_per_image', 'step_gflop_per_image'):
    rel = ours[key] / peer_flops[key] - 1
    flops_rows.append((key, peer_flops[key], ours[key], rel))

  peers = {'peer_channels_last': ['--channels_last']}
  if not a.no_peer_bf16:
    peers['peer_channels_last_bf16'] = ['--channels_last', '--bf16']
  if a.peer_nchw:
    peers['peer_nchw'] = []
  results = {name: [] for name in [*peers, *variants]}
  with tempfile.TemporaryDirectory(prefix='compare_peer_') as tmp:
    for r in range(a.repeats):
      for name, extra in peers.items():
        try:
          results[name].append(
              _with_machine_load(lambda extra=extra: run_peer(a, extra)))
        except subprocess.TimeoutExpired:
          results[name].append({'error': f'timed out after {a.peer_timeout:g}'
                                         ' s (--peer_timeout)'})
        except (subprocess.CalledProcessError, ValueError) as e:
          results[name].append({'error': str(e).splitlines()[0][:300]})
        print(f'[{r}] {name}: {results[name][-1]}', flush=True)
      for v in variants:
        results[v].append(_with_machine_load(
            lambda v=v, r=r: run_jax(a, v, tmp, a.profile and r == 0)))
        print(f'[{r}] {v}: '
              f'{ {k: x for k, x in results[v][-1].items() if k != "ops"} }',
              flush=True)

  def median_ips(rows):
    vals = [x['images_per_sec'] for x in rows if 'images_per_sec' in x]
    return statistics.median(vals) if vals else float('nan')

  ref = median_ips(results['peer_channels_last'])
  ref_bf16 = median_ips(results.get('peer_channels_last_bf16', []))
  table = {}
  for name, rows in results.items():
    ips = median_ips(rows)
    bf16 = name.endswith('_bf16')  # peer and jaxcolor runs alike
    table[name] = {'images_per_sec': ips, 'ratio_vs_peer_best': ips / ref,
                   'ratio_vs_peer_bf16': ips / ref_bf16,
                   'ratio_like_with_like': ips / (ref_bf16 if bf16 else ref),
                   'others_max_cores': max(
                       (x.get('machine_other_cores', 0.0) +
                        x.get('machine_steal_cores', 0.0) for x in rows),
                       default=0.0),
                   'runs': rows}
  speedups = [v for v in variants if v in SPEEDUPS]
  best = max(speedups, key=lambda v: table[v]['images_per_sec'],
             default=None)

  cpu = cpu_name()
  print(f'\n{cpu["model_name"]} ({", ".join(cpu["flags"]) or "no AVX-512"}),'
        f' batch {a.batch}, {a.threads} threads, {a.repeats} alternating '
        f'runs each (median); peer = eager channels_last')
  print(f'{"run":26s} {"images/s":>9s} {"x peer f32":>10s} '
        f'{"x peer bf16":>11s} {"x same dtype":>12s} {"others":>6s}')
  for name, row in table.items():
    mark = '  <- best with speed-ups' if name == best else ''
    print(f'{name:26s} {row["images_per_sec"]:9.2f} '
          f'{row["ratio_vs_peer_best"]:10.2f} '
          f'{row["ratio_vs_peer_bf16"]:11.2f} '
          f'{row["ratio_like_with_like"]:12.2f} '
          f'{row["others_max_cores"]:6.2f}{mark}')
  print('others: the most CPU cores other processes and the hypervisor '
        "(steal) took during one of the row's runs; above ~0.1 the machine "
        'was busy, run again.')
  print(f'\n{"GFLOP per image":30s} {"peer":>8s} {"jaxcolor":>9s} {"diff":>7s}')
  ok = True
  for key, pv, ov, rel in flops_rows:
    ok &= abs(rel) <= 0.01
    print(f'{key:30s} {pv:8.3f} {ov:9.3f} {100 * rel:6.2f}%')
  print(f'FLOPs agree within 1 %: {ok}')
  for v in variants:
    ops = next((x['ops'] for x in results[v] if x.get('ops')), None)
    if ops:
      print(f'\nWhere the time of {v} goes (its first run\'s last timed '
            f'call, traced):\n{op_profile.table(ops)}')
  with open('/proc/loadavg') as f:
    load = f.read().split()[:3]
  report = {'cpu': cpu, 'batch': a.batch, 'threads': a.threads,
            'repeats': a.repeats,
            'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'loadavg_end': load,
            'peer_flops': peer_flops, 'jaxcolor_flops': ours,
            'flops_agree_1pct': ok, 'best_speedup_variant': best,
            'results': table}
  try:
    files.write_json(a.json, report, indent=1)
  except OSError as e:
    sys.exit(f'compare_peer: cannot write {files.describe(e, a.json)}')
  print(f'Wrote {a.json}')


if __name__ == '__main__':
  main()
