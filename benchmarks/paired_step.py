"""Two settings of the trainer's step, in one process, call by call.

  PYTHONPATH=. python benchmarks/paired_step.py --config default \
      --set model.require_resnet18_weights=False --set data.batch_size=32 \
      --set dtype=bfloat16 --b donate_state=False \
      [--b_xla xla_cpu_prefer_vector_width=512] [--rounds 12] [--json OUT]

`--config` names a file of configs/ (default, quickstart, tiny, ...).
Builds the trainer's compiled step on synthetic device batches, as
`--mode=benchmark` does (its `StepTrainer`), for setting A (the config with
the `--set` and `--a` overrides) and setting B (`--set` and `--b`, plus
XLA compiler options `--b_xla` for B's compile alone), then times their
calls alternately: A then B in even rounds, B then A in odd ones.

On a shared machine the time of a call drifts by several percent within
minutes, often more than the difference being measured
(docs/benchmarks.md). In one process, call by call, both settings see the
same drift, and the per-round difference B - A (median, mean, how often B
was faster) shows effects that separate runs cannot. XLA_FLAGS are
process-wide: both settings compile with A's `xla_cpu_convolutions`, which
is applied as main.py applies it.
"""

import argparse
import ast
import importlib
import os
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

from jaxcolor import trainer
from jaxcolor.modes import benchmark
from jaxcolor.runtime import config_check
from jaxcolor.runtime import files
from jaxcolor.runtime import xla_flags


def load_config(name: str) -> ml_collections.ConfigDict:
  """`get_config()` of configs/<name>.py; ValueError if there is none."""
  if not name.isidentifier():
    raise ValueError(f'--config {name!r}: expected the name of a file in '
                     'configs/, e.g. default')
  try:
    module = importlib.import_module(f'configs.{name}')
  except ModuleNotFoundError as e:
    raise ValueError(f'--config {name!r}: no configs/{name}.py') from e
  return module.get_config()


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """KEY=VALUE (KEY dotted, an existing key) -> config, VALUE read as the
  type the key has; ValueError with a one-line reason otherwise."""
  key, sep, text = item.partition('=')
  if not sep:
    raise ValueError(f'{item!r}: expected KEY=VALUE')
  *path, last = key.split('.')
  node = config
  for part in path:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ValueError(f'{key!r}: no such config key')
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or last not in node:
    raise ValueError(f'{key!r}: no such config key')
  old = node[last]
  try:
    if isinstance(old, bool):
      value = {'true': True, 'false': False}[text.lower()]
    elif isinstance(old, (int, float)):
      value = type(old)(text)
    elif isinstance(old, (tuple, list)):
      value = type(old)(ast.literal_eval(text))
    else:
      value = text
  except (KeyError, ValueError, SyntaxError, TypeError) as e:
    wanted = {bool: 'true or false', int: 'an integer', float: 'a number'}
    raise ValueError(f'{key}={text!r}: expected '
                     f"{wanted.get(type(old), 'a ' + type(old).__name__)}"
                     ) from e
  node[last] = value


def compiler_options(items: list[str]) -> dict:
  """KEY=VALUE XLA debug options -> {key: bool, int or str}."""
  out = {}
  for item in items:
    key, sep, text = item.partition('=')
    if not sep:
      raise ValueError(f'{item!r}: expected KEY=VALUE')
    if text.lower() in ('true', 'false'):
      out[key] = text.lower() == 'true'
    elif text.lstrip('-').isdigit():
      out[key] = int(text)
    else:
      out[key] = text
  return out


class Setting:
  """One setting's `--mode=benchmark` trainer and its synthetic batch."""

  def __init__(self, config: ml_collections.ConfigDict, options: dict):
    self.trainer = benchmark.StepTrainer(config, compiler_options=options)
    self.batch = benchmark.synthetic_call_batch(
        self.trainer, config, np.random.default_rng(config.seed),
        config.data.batch_size // jax.process_count())
    self.compile_s = self.trainer.compile(self.batch)[1]['compile_s']
    self.seconds = []

  def call(self) -> float:
    """Seconds of one call, blocking on the new state and metrics."""
    t = time.perf_counter()
    self.trainer.call(self.batch)
    return time.perf_counter() - t


def compare(a: Setting, b: Setting, rounds: int, warmup: int = 1) -> dict:
  """Alternating calls; per-setting seconds and the paired differences."""
  for _ in range(warmup):
    a.call()
    b.call()
  for r in range(rounds):
    for s in ((a, b) if r % 2 == 0 else (b, a)):
      s.seconds.append(s.call())
  diffs = [tb - ta for ta, tb in zip(a.seconds, b.seconds)]
  row = {}
  for name, s in (('a', a), ('b', b)):
    row[name] = {'compile_s': s.compile_s, 'seconds': s.seconds,
                 'median_s': statistics.median(s.seconds),
                 'min_s': min(s.seconds)}
  row['b_minus_a_s'] = {
      'median': statistics.median(diffs), 'mean': statistics.mean(diffs),
      'b_faster_rounds': sum(d < 0 for d in diffs), 'rounds': rounds}
  row['a_over_b_median'] = row['a']['median_s'] / row['b']['median_s']
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', default='default',
                 help='a file of configs/, without .py')
  p.add_argument('--set', action='append', default=[],
                 help='KEY=VALUE override for both settings')
  p.add_argument('--a', action='append', default=[],
                 help='KEY=VALUE override for setting A only')
  p.add_argument('--b', action='append', default=[],
                 help='KEY=VALUE override for setting B only')
  p.add_argument('--b_xla', action='append', default=[],
                 help='XLA compiler option KEY=VALUE for B only')
  p.add_argument('--rounds', type=int, default=12)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  try:
    configs = []
    for own in (args.a, args.b):
      config = load_config(args.config)
      for item in args.set + own:
        apply_override(config, item)
      config_check.check(config)
      configs.append(config)
    options = compiler_options(args.b_xla)
  except (ValueError, OSError) as e:
    print(f'paired_step: {e}', file=sys.stderr)
    return 2
  if args.rounds < 1:
    print('paired_step: --rounds must be at least 1', file=sys.stderr)
    return 2
  folder = os.path.dirname(os.path.abspath(args.json)) if args.json else ''
  if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
    print(f'paired_step: --json {args.json}: {folder} is not a writable '
          'folder', file=sys.stderr)
    return 2
  try:
    # Before JAX starts a backend, as main.py does.
    xla_flags.apply(configs[0].get('xla_cpu_convolutions', xla_flags.DEFAULT),
                    configs[0].dtype)
    for config in configs:
      trainer.check_devices(config)
    a, b = Setting(configs[0], {}), Setting(configs[1], options)
  except (ValueError, OSError) as e:  # e.g. weights the config requires
    print(f'paired_step: {e}', file=sys.stderr)
    return 2
  except jax.errors.JaxRuntimeError as e:  # e.g. an unknown --b_xla option
    print(f'paired_step: {str(e).splitlines()[0]}', file=sys.stderr)
    return 2
  row = compare(a, b, args.rounds, args.warmup)
  row.update(config=args.config, set=args.set, a_overrides=args.a,
             b_overrides=args.b, b_xla=options, backend=jax.default_backend(),
             batch_size=configs[0].data.batch_size)
  d = row['b_minus_a_s']
  for name in ('a', 'b'):
    print(f"{name}: median {row[name]['median_s']:.3f} s, "
          f"min {row[name]['min_s']:.3f} s (compile {row[name]['compile_s']:.1f} s)")
  print(f"b - a per round: median {d['median']:+.3f} s, mean "
        f"{d['mean']:+.3f} s; b faster in {d['b_faster_rounds']} of "
        f"{d['rounds']} rounds; a/b medians {row['a_over_b_median']:.3f}")
  if args.json:
    try:
      files.write_json(args.json, row, indent=1)
    except OSError as e:
      print(f'paired_step: --json {args.json}: {e}', file=sys.stderr)
      return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
