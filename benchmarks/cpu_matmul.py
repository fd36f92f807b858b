"""One matmul on XLA CPU in float32 and bfloat16: its speed and library.

  python benchmarks/cpu_matmul.py [--m 7200 --k 8192 --n 512] [--repeats 3]
  XLA_FLAGS='--xla_cpu_use_onednn=true
      --xla_cpu_experimental_onednn_fusion_type=individual_dot' \
      python benchmarks/cpu_matmul.py

The default shape is the critic's conv5 forward at batch 32 as a matmul
over patches (conv_impl='mm': 32*15*15 pixels, 4*4*512 taps, 512 output
channels). Three dtype forms:

- float32: float32 operands and result;
- bf16->bf16: bfloat16 operands and result (what a bfloat16 convolution or
  matmul is in the other conv_impl forms); jaxlib 0.10 converts both to
  float32 first, so it runs on float32 kernels;
- bf16->f32: bfloat16 operands, float32 result (conv_impl='mm'); kept in
  bfloat16 and run by YNNPACK's bfloat16 kernels.

For each, prints the best of `--repeats` timed calls, GFLOP/s (2*M*K*N),
the library whose fusion holds the matmul (ynn, onednn or xla) and whether
XLA converted the operands; then the CPU (lscpu's model name, its bfloat16
flags) and how many times float32's rate bf16->f32 runs at, the ratio
docs/benchmarks.md predicts conv_impl='mm' in bfloat16 from. Reads the
process's XLA_FLAGS as JAX does.
"""

import argparse
import os
import re
import sys
import time

import jax
from jax import lax
import jax.numpy as jnp

import compare_peer  # this folder's: lscpu's model name and flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxcolor.runtime import files  # pylint: disable=wrong-import-position

FORMS = {'float32': (jnp.float32, None),
         'bf16->bf16': (jnp.bfloat16, None),
         'bf16->f32': (jnp.bfloat16, jnp.float32)}


def library(hlo_text: str) -> str:
  """Which library's fusion holds the compiled program's matmul."""
  for kind in ('ynn', 'onednn', 'xnn'):
    if f'"kind":"__{kind}_fusion"' in hlo_text:
      return kind
  return 'xla'


def time_form(form: str, m: int, k: int, n: int, repeats: int) -> dict:
  dtype, result = FORMS[form]
  a = jnp.ones((m, k), dtype)
  b = jnp.ones((k, n), dtype)
  matmul = jax.jit(lambda a, b: lax.dot_general(
      a, b, (((1,), (0,)), ((), ())), preferred_element_type=result))
  compiled = matmul.lower(a, b).compile()
  text = compiled.as_text()
  compiled(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    compiled(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return {'form': form, 'ms': best * 1e3,
          'gflops': 2 * m * k * n / best / 1e9, 'library': library(text),
          'converted': bool(re.search(r'\bconvert\(', text))}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--m', type=int, default=7200)
  p.add_argument('--k', type=int, default=8192)
  p.add_argument('--n', type=int, default=512)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--forms', default=','.join(FORMS))
  p.add_argument('--json', default='')
  a = p.parse_args(argv)
  forms = a.forms.split(',')
  unknown = [f for f in forms if f not in FORMS]
  if unknown or a.repeats < 1 or min(a.m, a.k, a.n) < 1:
    p.error(f'--forms from {tuple(FORMS)}, --repeats and sizes >= 1 '
            f'(got {unknown or a.repeats})')
  rows = [time_form(f, a.m, a.k, a.n, a.repeats) for f in forms]
  print(f'matmul {a.m}x{a.k} @ {a.k}x{a.n}, best of {a.repeats}')
  print(f'{"form":<11} {"ms":>9} {"GFLOP/s":>8}  library  converted')
  for r in rows:
    print(f'{r["form"]:<11} {r["ms"]:>9.1f} {r["gflops"]:>8.1f}  '
          f'{r["library"]:<7}  {r["converted"]}')
  cpu = compare_peer.cpu_name()
  flags = ', '.join(cpu['flags']) or 'none of ' + ', '.join(
      compare_peer.CPU_FLAGS)
  print(f'CPU: {cpu["model_name"]}; flags: {flags}')
  rate = {r['form']: r['gflops'] for r in rows}
  ratio = (rate['bf16->f32'] / rate['float32']
           if {'bf16->f32', 'float32'} <= rate.keys() else None)
  if ratio is not None:
    print(f'bf16->f32 / float32: {ratio:.2f}x')
  if a.json:
    try:
      files.write_json(a.json, {'shape': [a.m, a.k, a.n], 'cpu': cpu,
                                'rows': rows,
                                'bf16_f32_over_float32': ratio}, indent=1)
    except OSError as e:
      print(f'cpu_matmul: cannot write {files.describe(e, a.json)}',
            file=sys.stderr)
      return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
