"""Where a traced program's time goes: its XLA ops by kind, pass and layer.

`summarize(folder, hlo_text, calls)` reads the `<host>.trace.json.gz` that
`jax.profiler` wrote into `folder` and joins every op it timed (trace
events that carry `hlo_op`, on CPUs the thunks, on GPUs the kernels) with
the compiled program's text (`compiled.as_text()`; `--mode=benchmark`
writes it beside the trace as `step.hlo.txt`), which says for each op:

- its kind: convolution, matmul, elementwise (loop and reduction fusions,
  single elementwise ops), copy/transpose, collective, other;
- the library that runs it, as the op's HLO names it: Eigen (XLA CPU's
  own convolution and dot), YNNPACK, oneDNN, cuDNN, cuBLAS, Triton, or XLA
  for code XLA generates;
- its pass: backward when JAX's name stack has `transpose(` (gradients),
  else forward;
- its layer: the Flax module path in the op's metadata (`Generator/up4`);
- its FLOPs (multiply-adds ×2, from the shapes), hence the rate it ran
  at: for XLA's own convolution and dot ops (Eigen's on CPUs) and the
  fusions that hold them (YNNPACK's, Triton's), not for library calls
  (oneDNN, cuDNN, cuBLAS), whose operands the text does not label.

Times are per call of the program: the wall time each op ran for, split
evenly among the ops that ran beside it (a CPU's thunks share its cores, a
GPU's streams its SMs), so the ops add up to the time the device was busy;
divided by the calls traced and, on GPUs and TPUs, the devices. A CPU op
runs from its launch to its completion: one queued behind a long op for
the same cores is charged part of that op's time, so small ops' rates read
low where they overlapped large ones.

Control flow (`while`, `conditional`, `call`) is left out: the ops of its
bodies are timed on their own.
"""

import bisect
import collections
import glob
import gzip
import json
import math
import os
import re
from typing import Any, Optional

HLO_FILE = 'step.hlo.txt'  # the traced program's text, beside its trace
KINDS = ('convolution', 'matmul', 'elementwise', 'copy/transpose',
         'collective', 'other')
_CONTROL = {'while', 'conditional', 'call', 'async-start', 'async-done'}
_COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
                'collective-permute')
_LIBRARIES = (('ynn', 'YNNPACK'), ('onednn', 'oneDNN'),
              ('jaxcolor_dnnl', 'oneDNN'), ('cudnn', 'cuDNN'),
              ('cublas', 'cuBLAS'), ('triton', 'Triton'))
# Name-stack entries that are JAX's, not Flax modules' (after unwrapping
# `transpose(jvp(...))`).
_NOT_A_MODULE = re.compile(r'(cond|while|body|cond_fun|body_fun|scan|'
                           r'branch_\d+|checkpoint|remat\d*|rematted_'
                           r'computation|custom_jvp_call|custom_vjp_call|'
                           r'shard_map|pmap|vmap|main)$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$')
_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')


class Op:
  """One instruction of the compiled program: its name, opcode, text, the
  computations it calls, its JAX name stack, its shape and operands."""

  def __init__(self, name: str, rest: str, line: str):
    self.name, self.line = name, line
    shape_end = _shape_end(rest)
    self.shape = rest[:shape_end].split('{')[0].strip()
    found = re.match(r'\s*([a-z][\w\-]*)\(', rest[shape_end:])
    self.opcode = found.group(1) if found else ''
    args = rest[shape_end + (found.end() if found else 0):]
    self.operands = re.findall(r'%([\w.\-]+)', args[:_close(args)])
    self.calls = re.findall(r'calls=%?([\w.\-]+)', line)
    found = re.search(r'op_name="([^"]*)"', line)
    self.op_name = found.group(1) if found else ''


def _close(text: str) -> int:
  """The index of the ')' that closes an already opened bracket."""
  depth = 1
  for i, ch in enumerate(text):
    depth += (ch == '(') - (ch == ')')
    if depth == 0:
      return i
  return len(text)


def _shape_end(rest: str) -> int:
  """Where the shape at the start of an instruction's text ends."""
  if rest.startswith('('):  # a tuple shape
    return _close(rest[1:]) + 2
  return re.match(r'\S*', rest).end()


def dims(shape: str) -> list[int]:
  """'f32[64,8,8,512]' -> [64, 8, 8, 512] ([] for a tuple or scalar)."""
  found = re.match(r'\w+\[([\d,]*)\]', shape)
  return [int(d) for d in found.group(1).split(',') if d] if found else []


def parse_hlo(hlo_text: str) -> tuple[dict[str, list[Op]], Optional[str]]:
  """({computation: its instructions}, the module's name) of HLO text."""
  computations: dict[str, list[Op]] = {}
  current: list[Op] = []
  module = None
  for line in hlo_text.splitlines():
    if line.startswith('HloModule '):
      module = line.split()[1].rstrip(',')
      continue
    found = _INSTRUCTION.match(line)
    if found and not line.rstrip().endswith('{'):
      current.append(Op(found.group(1), found.group(2), line))
      continue
    found = _COMPUTATION.match(line)
    if found:
      current = computations.setdefault(found.group(1), [])
  return computations, module


def _opcodes(computations, name: str, seen=None) -> set[str]:
  """Every opcode in computation `name` and the computations it calls."""
  seen = set() if seen is None else seen
  if name in seen:
    return set()
  seen.add(name)
  found = set()
  for op in computations.get(name, ()):
    found.add(op.opcode)
    for called in op.calls:
      found |= _opcodes(computations, called, seen)
  return found


def flops(op: Op, ops: dict[str, Op], computations) -> float:
  """Multiply-adds ×2 of a convolution or dot, or of those inside a fusion
  (0 for other ops and for shapes the text does not give)."""
  if op.opcode == 'convolution' and len(op.operands) == 2:
    labels = re.search(r'dim_labels=\w+_(\w+)->', op.line)
    kernel = dims(ops[op.operands[1]].shape) if op.operands[1] in ops else []
    if not labels or len(labels.group(1)) != len(kernel):
      return 0.0
    rhs = labels.group(1)
    window = math.prod(k for k, c in zip(kernel, rhs) if c.isdigit())
    return 2.0 * math.prod(dims(op.shape)) * window * kernel[rhs.index('i')]
  if op.opcode == 'dot' and op.operands:
    lhs = dims(ops[op.operands[0]].shape) if op.operands[0] in ops else []
    found = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', op.line)
    if not lhs or not found:
      return 0.0
    contracted = [lhs[int(d)] for d in found.group(1).split(',') if d]
    return 2.0 * math.prod(dims(op.shape)) * math.prod(contracted)
  return sum(flops(inner, ops, computations) for called in op.calls
             for inner in computations.get(called, ()))


def kind(op: Op, computations) -> str:
  """The op's kind (one of KINDS), or 'control' for control flow."""
  if op.opcode in _CONTROL:
    return 'control'
  inner = {op.opcode}
  for called in op.calls:
    inner |= _opcodes(computations, called)
  line = op.line.lower()
  if 'convolution' in inner or 'conv' in _target(line):
    return 'convolution'
  if 'dot' in inner or re.search(r'matmul|gemm|dot', _target(line)):
    return 'matmul'
  if op.opcode.removesuffix('-start') in _COLLECTIVES:
    return 'collective'
  if op.opcode in ('copy', 'transpose') or inner <= {'copy', 'transpose',
                                                    'bitcast', 'parameter'}:
    return 'copy/transpose'
  if op.opcode in ('custom-call', 'infeed', 'outfeed', 'send', 'recv'):
    return 'other'
  return 'elementwise'


def _target(line: str) -> str:
  found = re.search(r'custom_call_target="([^"]*)"', line)
  return found.group(1) if found else ''


def library(op: Op, backend: str) -> str:
  """Who runs the op, as its HLO line names it (metadata aside)."""
  line = op.line.lower().split('metadata=')[0]
  for key, name in _LIBRARIES:
    if key in line:
      return name
  if backend == 'cpu' and op.opcode in ('convolution', 'dot'):
    return 'Eigen'
  return 'XLA'


def layer(op_name: str) -> str:
  """The Flax module path of a name stack, e.g. 'Generator/down3' ('' if
  none).

  The stack reads `jit(_fun)/transpose(jvp(Generator))/down3/conv_general_
  dilated`: `jit(...)` names a compiled function, other transformations
  wrap module names, the last entry is the primitive. A fused op's stack
  lists its parts' stacks separated by ';': the first is used.
  """
  names = []
  for part in op_name.split(';')[0].split('/')[:-1]:
    if re.match(r'p?jit\(', part):
      continue
    inner = re.sub(r'^(?:\w+\()+', '', part).rstrip(')')
    if inner and not _NOT_A_MODULE.match(inner):
      names.append(inner)
  return '/'.join(names)


def _pass(op_name: str) -> str:
  """'backward' for gradients (JAX transposes them), 'forward', or '-' for
  an op XLA made without a source (no name stack)."""
  if not op_name:
    return '-'
  return 'backward' if 'transpose(' in op_name else 'forward'


def _events(folder: str) -> tuple[list[dict], dict[int, str]]:
  """The trace's complete events and {pid: process name}, from `folder`'s
  `*.trace.json.gz`. Events without a name or a process, and complete
  events without a time, are left out (`args` that is not a mapping is
  read as none); a file that is not a gzipped JSON trace is a ValueError or
  OSError naming it."""
  paths = sorted(glob.glob(os.path.join(folder, '*.trace.json.gz')))
  if not paths:
    raise FileNotFoundError(f'no *.trace.json.gz in {folder}')
  events, processes = [], {}
  for path in paths:
    try:
      with gzip.open(path, 'rt') as f:
        data = json.load(f)
    except EOFError as e:  # a gzip stream cut short
      raise ValueError(f'{path}: truncated ({e})') from e
    found = data.get('traceEvents', []) if isinstance(data, dict) else data
    if not isinstance(found, list):
      raise ValueError(f'{path}: not a trace (no list of events)')
    for e in found:
      if not (isinstance(e, dict) and isinstance(e.get('name'), str)
              and 'pid' in e):
        continue
      if not isinstance(e.get('args'), dict):
        e['args'] = {}
      if e.get('ph') == 'X' and isinstance(e.get('ts'), (int, float)):
        events.append(e)
      elif e.get('ph') == 'M' and e['name'] == 'process_name':
        processes[e['pid']] = str(e['args'].get('name', ''))
  return events, processes


def _intervals(events: list[dict], module: Optional[str]
               ) -> dict[Any, list[tuple[float, float, str]]]:
  """{timeline: [(start µs, end µs, hlo op)]} of the ops of `module`.

  A timeline is a device's where the trace has devices (GPUs, TPUs), else
  the host's: a CPU's devices share its cores. A CPU thunk that hands its
  work to the thread pool returns at once and leaves an `end: <op>` marker,
  on whichever thread finishes it, when it completes: its k-th run ends at
  the first marker of its name after it starts.
  """
  ops = [e for e in events if (e.get('args') or {}).get('hlo_op')]
  # The module's events (a GPU trace may add a suffix to its name); all of
  # them if none is named so.
  ours = [e for e in ops if str(e['args'].get('hlo_module', module))
          .startswith(module or '')]
  ops = ours or ops
  ends = collections.defaultdict(list)
  for e in events:
    if e['name'].startswith('end: '):
      ends[e['name'][5:]].append(e['ts'])
  for marks in ends.values():
    marks.sort()
  used = collections.Counter()
  timelines = collections.defaultdict(list)
  for e in sorted(ops, key=lambda e: e['ts']):
    name, start = e['args']['hlo_op'], float(e['ts'])
    end = start + float(e.get('dur', 0.0))
    marks = ends.get(name, ())
    i = max(used[name], bisect.bisect_left(marks, start))
    if i < len(marks):
      end = max(end, marks[i])
      used[name] = i + 1
    timelines[e['pid']].append((start, end, name))
  return timelines


def op_times(events: list[dict], processes: dict[int, str],
             module: Optional[str]) -> tuple[dict[str, float], int]:
  """({hlo op: µs of wall time}, timelines) of the events of `module`.

  Each op gets the wall time it ran for, split evenly with the ops that ran
  beside it on the same timeline: a timeline's ops add up to the time it
  was busy.
  """
  timelines = _intervals(events, module)
  devices = [pid for pid in timelines
             if processes.get(pid, '').startswith('/device:')]
  if devices:  # kernels on devices: the host's launch events are left out
    timelines = {pid: timelines[pid] for pid in devices}
  times = collections.Counter()
  for intervals in timelines.values():
    edges = sorted({t for a, b, _ in intervals for t in (a, b)})
    starts = sorted(intervals)
    active, i = [], 0
    for left, right in zip(edges, edges[1:]):
      while i < len(starts) and starts[i][0] <= left:
        active.append(starts[i])
        i += 1
      active = [iv for iv in active if iv[1] > left]
      for iv in active:
        times[iv[2]] += (right - left) / len(active)
  return dict(times), max(1, len(timelines))


def summarize(folder: str, hlo_text: str, calls: int, backend: str,
              top: int = 15) -> dict[str, Any]:
  """Per-call op time of a trace, by kind, library, pass and layer.

  Returns {'ms_per_call': busy time per call, 'by_kind': {kind: ms},
  'by_pass', 'by_library': the same, 'by_layer': the `top` largest layers,
  'gflop_per_s': {kind: rate} for convolutions and matmuls, 'top_ops': the
  `top` costliest ops as dicts (op, kind, library, pass, layer, shape, ms,
  gflop: their multiply-adds ×2 / 1e9, gflop_per_s), 'unmatched_ms': time
  of traced ops not in `hlo_text`}. `backend`: jax.default_backend().
  """
  computations, module = parse_hlo(hlo_text)
  ops = {op.name: op for body in computations.values() for op in body}
  times, timelines = op_times(*_events(folder), module)
  scale = 1e-3 / max(1, calls) / timelines  # µs -> ms per call and device
  by = {key: collections.Counter() for key in ('kind', 'pass', 'library',
                                                'layer')}
  work = collections.Counter()
  rows, unmatched = [], 0.0
  for name, us in times.items():
    op = ops.get(name)
    if op is None:
      unmatched += us * scale
      continue
    op_kind = kind(op, computations)
    if op_kind == 'control':
      continue
    gflop = flops(op, ops, computations) / 1e9
    row = {'op': name, 'kind': op_kind, 'library': library(op, backend),
           'pass': _pass(op.op_name), 'layer': layer(op.op_name) or '-',
           'shape': op.shape, 'ms': us * scale, 'gflop': gflop,
           'gflop_per_s': gflop / (us * scale / 1e3) if gflop and us else None}
    rows.append(row)
    for key in by:
      by[key][row[key]] += row['ms']
    work[op_kind] += gflop
  rows.sort(key=lambda r: -r['ms'])
  return {'ms_per_call': sum(r['ms'] for r in rows),
          'by_kind': {k: by['kind'][k] for k in KINDS if by['kind'][k]},
          'by_pass': dict(by['pass'].most_common()),
          'by_library': dict(by['library'].most_common()),
          'by_layer': dict(by['layer'].most_common(top)),
          'gflop_per_s': {k: work[k] / (by['kind'][k] / 1e3) for k in KINDS
                          if work[k] and by['kind'][k]},
          'top_ops': rows[:top], 'unmatched_ms': unmatched}


def table(summary: dict[str, Any]) -> str:
  """The summary as lines of text."""
  total = summary['ms_per_call'] or 1.0
  rates = summary['gflop_per_s']
  lines = [f'XLA ops, busy time per call: {total:.1f} ms (ops that ran side '
           'by side split the time they overlap)']
  for key, title in (('by_kind', 'kind'), ('by_library', 'library'),
                     ('by_pass', 'pass'), ('by_layer', 'layer')):
    lines.append(f'  by {title}: ' + ', '.join(
        f'{name} {ms:.1f} ms ({ms / total:.0%}'
        + (f', {rates[name]:.0f} GFLOP/s' if key == 'by_kind' and
           name in rates else '') + ')'
        for name, ms in summary[key].items()))
  header = (f'  {"op":<28} {"kind":<12} {"library":<8} {"pass":<8} '
            f'{"layer":<22} {"shape":<20} {"ms":>8} {"share":>6} '
            f'{"GFLOP/s":>7}')
  lines += [header, '  ' + '-' * (len(header) - 2)]
  for r in summary['top_ops']:
    rate = r['gflop_per_s']
    lines.append(
        f'  {r["op"][:28]:<28} {r["kind"][:12]:<12} {r["library"]:<8} '
        f'{r["pass"]:<8} {r["layer"][:22]:<22} {r["shape"][:20]:<20} '
        f'{r["ms"]:>8.2f} {r["ms"] / total:>6.1%} '
        f'{"-" if rate is None else format(rate, ".0f"):>7}')
  return '\n'.join(lines)
