"""Training-step time of each `config.model.conv_impl`, in one process.

  python benchmarks/step_impls.py --batch 64 --impls fast,phase --repeats 3

Builds the default config's GAN (random ResNet weights), compiles the
trainer's own `train_step` once per implementation, then times the calls
interleaved (A, B, A, B, ...) on one synthetic batch and prints the median
seconds, images/s and the ratio to the first implementation, plus process
CPU seconds per step (less sensitive to other processes' load).
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from configs import default as default_config
from jaxcolor.modes import benchmark
from jaxcolor import families
from jaxcolor.runtime import parallel
from jaxcolor import trainer
from jaxcolor.runtime import xla_flags
import paired_step  # beside this script


def build(impl, batch, overrides):
  config = default_config.get_config()
  config.data.batch_size = batch
  config.model.require_resnet18_weights = False
  config.model.conv_impl = impl
  for key, value in overrides.items():
    paired_step.apply_override(config, f'{key}={value}')
  family = families.build(config)
  par = parallel.Parallel.create('pmap')
  state = par.to_step_layout(trainer.init_state(family, par, config))
  step = par.compile(family.train_step, donate_state=False)
  # The benchmark's batch: with data.use_feature_cache it also holds the
  # ResNet features, so the step really skips the ResNet.
  data = par.put_batch(benchmark.synthetic_batch(
      config, np.random.default_rng(0), batch))
  t = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - t
  return compiled, state, data, compile_s


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--impls', default='fast,phase')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--set', action='append', default=[],
                 help='config override KEY=VALUE (applies to all)')
  p.add_argument('--json', default='')
  p.add_argument('--xla_cpu_convolutions', default=xla_flags.DEFAULT,
                 help='XLA CPU convolution kernels (as the config key)')
  a = p.parse_args()
  overrides = dict(s.split('=', 1) for s in a.set)
  # Before JAX starts, as main.py.
  xla_flags.apply(a.xla_cpu_convolutions, overrides.get('dtype', 'float32'))
  runs = {}
  for impl in a.impls.split(','):
    compiled, state, data, compile_s = build(impl, a.batch, overrides)
    jax.block_until_ready(compiled(state, data))  # warm-up
    runs[impl] = (compiled, state, data, compile_s, [], [])
    print(f'{impl}: compiled in {compile_s:.1f} s', flush=True)
  for _ in range(a.repeats):
    for impl, (compiled, state, data, _, walls, cpus) in runs.items():
      c, t = time.process_time(), time.perf_counter()
      jax.block_until_ready(compiled(state, data))
      walls.append(time.perf_counter() - t)
      cpus.append(time.process_time() - c)
  with open('/proc/loadavg') as f:
    load = f.read().split()[:3]
  out = {'batch': a.batch, 'loadavg_after': load, 'results': {}}
  base = None
  for impl, (_, _, _, compile_s, walls, cpus) in runs.items():
    w, c = statistics.median(walls), statistics.median(cpus)
    base = base or w
    out['results'][impl] = {'step_s': w, 'cpu_s': c, 'min_s': min(walls),
                            'images_per_s': a.batch / w,
                            'compile_s': compile_s}
    print(f'{impl:8s} step {w:7.3f} s (min {min(walls):.3f})  cpu {c:7.2f} s  '
          f'{a.batch / w:6.2f} img/s  speed-up x{base / w:.2f}', flush=True)
  print('loadavg', ' '.join(load))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
