"""Thread time of oneDNN's primitives per training step, from verbose logs.

  ONEDNN_VERBOSE=1 ONEDNN_VERBOSE_TIMESTAMP=1 python main.py --mode=benchmark \\
      --config.model.conv_impl=dnnl ... > jax.log 2>&1
  ONEDNN_VERBOSE=1 ONEDNN_VERBOSE_TIMESTAMP=1 python PEER/bench.py --bf16 \\
      --channels_last ... > peer.log 2>&1
  python benchmarks/onednn_time.py jax.log --peer peer.log [--json OUT]

Reads the `exec` lines oneDNN prints (its 3.x formats with and without
`v1`; timestamps required), splits them into steps and prints, for each of
the last `--steps` steps: the wall time from its first primitive to the end
of its last, the time any primitive ran (union), how long 0, 1, 2, ...
primitives ran at once, and the summed time of each kind (convolution
forward, input grad, weight grad, reorders).

jaxcolor's `dnnl` kernel runs each call as slices of the batch on XLA's
threads, each slice on one thread, so its lines add up to thread time. A
program whose oneDNN runs each primitive on an OpenMP team (the PyTorch
peer) logs one line per primitive with the team's wall time: `--peer_threads`
(default 2) converts it to thread time. `--peer` compares the two layer by
layer, the batch size taken out of the problem (mb16 and mb32 of one layer
are one row) and a deconvolution named as the convolution it transposes.

A step starts where the log's first convolution forward (by default;
`--marker SUBSTRING` picks another problem) runs again at least
`--min_step_ms` after the last step's start: a step may run one problem
more than once (a transposed convolution's input grad is a forward
convolution), and jaxcolor's slices of one call start together.
"""

import argparse
import collections
import dataclasses
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxcolor.runtime import files  # pylint: disable=wrong-import-position


@dataclasses.dataclass(frozen=True)
class Exec:
  start_ms: float
  ms: float
  primitive: str
  prop: str
  problem: str


def parse_line(line: str):
  """One verbose line -> Exec, or None (not an `exec` line).

  ValueError for an `exec` line without a timestamp.
  """
  if not line.startswith('onednn_verbose,'):
    return None
  f = line.rstrip('\n').split(',')
  if 'exec' not in f[1:5]:
    return None
  i = f.index('exec')
  stamp = f[i - 2] if f[i - 1] == 'primitive' else f[i - 1]
  try:
    start = float(stamp)
  except ValueError:
    raise ValueError('a oneDNN verbose line without a timestamp: run with '
                     'ONEDNN_VERBOSE_TIMESTAMP=1') from None
  # exec, engine, primitive, implementation, prop, ..., problem, ms
  return Exec(start, float(f[-1]), f[i + 2], f[i + 4], f[-2])


def read_log(path: str) -> list[Exec]:
  """Every `exec` line of a log, by start time; ValueError if none."""
  with open(path, encoding='utf-8', errors='replace') as f:
    execs = [e for e in map(parse_line, f) if e is not None]
  if not execs:
    raise ValueError(f'{path}: no oneDNN exec lines (was ONEDNN_VERBOSE=1 '
                     'set?)')
  return sorted(execs, key=lambda e: e.start_ms)


def first_forward(execs: list[Exec]) -> str:
  """The problem of the first convolution forward, else of the first exec."""
  for e in execs:
    if e.primitive == 'convolution' and e.prop.startswith('forward'):
      return e.problem
  return execs[0].problem


def split_steps(execs: list[Exec], marker: str = '',
                min_step_ms: float = 500.0) -> list[list[Exec]]:
  """Execs -> steps, each starting at an occurrence of the marker problem
  (default: `first_forward`) at least min_step_ms after the previous
  step's start."""
  marker = marker or first_forward(execs)
  starts, last = [], None
  for i, e in enumerate(execs):
    if marker in e.problem and (last is None or
                                e.start_ms - last >= min_step_ms):
      starts.append(i)
      last = e.start_ms
  if not starts:
    raise ValueError(f'no exec line has the marker problem {marker!r}')
  bounds = starts + [len(execs)]
  steps = [execs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
  if len(steps) > 1 and 2 * len(steps[-1]) < len(steps[-2]):
    steps.pop()  # the log ends inside a step
  return steps


def step_summary(step: list[Exec], threads: int = 1) -> dict:
  """Wall, union and concurrency of one step's execs; summed thread ms by
  kind (an exec's ms times `threads`, the team it ran on)."""
  # Starts before ends at one instant: an exec of 0 ms never counts as -1.
  points = sorted([(e.start_ms, 1) for e in step] +
                  [(e.start_ms + e.ms, -1) for e in step],
                  key=lambda p: (p[0], -p[1]))
  levels = collections.Counter()
  running, last = 0, points[0][0]
  for t, change in points:
    levels[running] += t - last
    running, last = running + change, t
  kinds = collections.Counter()
  for e in step:
    kinds[f'{e.primitive} {e.prop}'] += e.ms * threads
  return {
      'execs': len(step),
      'wall_ms': points[-1][0] - points[0][0],
      'union_ms': sum(v for k, v in levels.items() if k > 0),
      'ms_with_n_running': {str(k): v for k, v in sorted(levels.items())},
      'thread_ms': sum(kinds.values()),
      'thread_ms_by_kind': dict(kinds.most_common()),
  }


# A transposed convolution's passes are those of the convolution it is the
# input grad of, with the two sides swapped.
_AS_CONVOLUTION = {'forward_training': 'backward_data',
                   'forward_inference': 'backward_data',
                   'backward_data': 'forward_training',
                   'backward_weights': 'backward_weights'}
_SIDES = re.compile(r'ic(\d+)oc(\d+)_ih(\d+)oh(\d+)(.*)_iw(\d+)ow(\d+)(.*)')


def layer_key(e: Exec) -> str:
  """'convolution PASS PROBLEM' without the batch size. A deconvolution is
  named as the convolution whose input grad it is (jaxcolor computes its
  transposed convolutions so), so both programs' rows meet."""
  problem = re.sub(r'^mb[0-9]+_?', '', e.problem)
  match = _SIDES.fullmatch(problem)
  if e.primitive == 'deconvolution' and match and e.prop in _AS_CONVOLUTION:
    ic, oc, ih, oh, h_rest, iw, ow, w_rest = match.groups()
    problem = f'ic{oc}oc{ic}_ih{oh}oh{ih}{h_rest}_iw{ow}ow{iw}{w_rest}'
    return f'convolution {_AS_CONVOLUTION[e.prop]} {problem}'
  return f'{e.primitive} {e.prop} {problem}'


def by_layer(step: list[Exec], threads: int = 1) -> dict[str, float]:
  out = collections.Counter()
  for e in step:
    out[layer_key(e)] += e.ms * threads
  return dict(out)


def compare_layers(ours: dict[str, float], peer: dict[str, float],
                   top: int) -> list[tuple[str, float, float]]:
  """(layer, our thread ms, peer's thread ms), largest |difference| first."""
  rows = [(k, ours.get(k, 0.0), peer.get(k, 0.0)) for k in set(ours) | set(peer)]
  rows.sort(key=lambda r: -abs(r[1] - r[2]))
  return rows[:top]


def _print_steps(name: str, summaries: list[dict]) -> None:
  print(f'{name}:')
  for i, s in enumerate(summaries):
    levels = ', '.join(f'{k}: {v:.0f}' for k, v in s['ms_with_n_running'].items())
    kinds = ', '.join(f'{k} {v:.0f}' for k, v in
                      list(s['thread_ms_by_kind'].items())[:6])
    print(f"  step {i}: wall {s['wall_ms']:.0f} ms, union {s['union_ms']:.0f}, "
          f"thread {s['thread_ms']:.0f} | ms with n running: {levels}")
    print(f'    thread ms by kind: {kinds}')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('log', help="jaxcolor's log (or any oneDNN verbose log)")
  p.add_argument('--peer', default='', help="the peer's log, to compare")
  p.add_argument('--threads', type=int, default=1,
                 help="threads each of the log's primitives ran on (1 for "
                 "jaxcolor's slices)")
  p.add_argument('--peer_threads', type=int, default=2,
                 help="threads each of the peer's primitives ran on")
  p.add_argument('--steps', type=int, default=2, help='the last N steps')
  p.add_argument('--marker', default='', help='problem that starts a step')
  p.add_argument('--min_step_ms', type=float, default=500.0,
                 help='shortest step (keep it below the real step time)')
  p.add_argument('--top', type=int, default=12, help='layers to list')
  p.add_argument('--json', default='')
  a = p.parse_args(argv)
  out = {}
  folder = os.path.dirname(os.path.abspath(a.json)) if a.json else ''
  if folder and not os.access(folder, os.W_OK):
    print(f'onednn_time: --json {a.json}: {folder} is not writable',
          file=sys.stderr)
    return 2
  try:
    for name, path, threads in (('log', a.log, a.threads),
                                ('peer', a.peer, a.peer_threads)):
      if not path:
        continue
      steps = split_steps(read_log(path), a.marker, a.min_step_ms)[-a.steps:]
      out[name] = {'path': path, 'threads': threads,
                   'steps': [step_summary(s, threads) for s in steps],
                   'layers': by_layer(steps[-1], threads)}
  except (OSError, ValueError) as e:
    print(f'onednn_time: {e}', file=sys.stderr)
    return 2
  for name in out:
    _print_steps(f"{name} ({out[name]['path']})", out[name]['steps'])
  if 'peer' in out:
    ours, peer = out['log']['layers'], out['peer']['layers']
    print(f'last step, thread ms: {sum(ours.values()):.0f} against the '
          f"peer's {sum(peer.values()):.0f}; largest differences:")
    for key, t_ours, t_peer in compare_layers(ours, peer, a.top):
      print(f'  {t_ours:8.1f} {t_peer:8.1f}  {key}')
  if a.json:
    try:
      files.write_json(a.json, out, indent=1)
    except OSError as e:
      print(f'onednn_time: --json {a.json}: {e}', file=sys.stderr)
      return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
