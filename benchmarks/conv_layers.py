"""Per-layer GFLOP/s of the model's convolutions on XLA CPU.

Times forward, input-gradient and weight-gradient of every convolution shape
the default config emits (generator d1..d7 / u1..u7, critic conv1..conv6,
ResNet-18 at 224 px), each jitted alone, for each form named in --impls
(conv: xla, mm, s2d, tap; transposed conv: xla, phase, d2s, mm), `fast`
(the per-pass forms `config.model.conv_impl='fast'` picks) or the kernel
library's `dnnl` and `winograd` (`conv_impl` of that name: Winograd's
method where `conv_impl.winograd_pays`, else oneDNN's direct convolution),
in float32 or, with `--dtype=bfloat16`, bfloat16 activations:

  python benchmarks/conv_layers.py --batch 64 --impls fast,xla --repeats 2
  python benchmarks/conv_layers.py --batch 32 --impls dnnl,winograd \
      --only D.c3,D.c4,D.c5,R.l --dtype bfloat16

FLOPs are 2 x MACs of the layer's forward (each gradient costs the same).
Implementations are timed interleaved (A, B, A, B, ...); medians reported.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from jaxcolor.runtime import xla_flags
from jaxcolor.models import conv_impl as conv_lib
from jaxcolor.models import conv_transpose


def layer_table():
  """[(name, kind, H_in, C_in, C_out, k, stride, padding)] of the model."""
  rows = []
  g = (64, 128, 256, 512, 512, 512, 512)
  h, c = 64, 2
  for i, w in enumerate(g):
    s = 1 if i == 0 else 2
    pad = ((1, 2), (1, 2)) if s == 1 else ((1, 1), (1, 1))
    cin = c + (512 if i == 6 else 0)
    rows.append((f'G.d{i + 1}', 'conv', h, cin, w, 4, s, pad))
    h //= s
    c = w
  # decoder: input channels after the skip concatenations
  ups = [(1, 512, 512), (2, 1536, 512), (4, 1024, 512), (8, 1024, 256),
         (16, 512, 128), (32, 256, 64)]
  for j, (hin, cin, cout) in enumerate(ups):
    rows.append((f'G.u{j + 1}', 'convT', hin, cin, cout, 4, 2,
                 conv_transpose.transpose_padding(4, 2)))
  rows.append(('G.u7', 'conv', 64, 128, 4, 4, 1, ((1, 2), (1, 2))))
  d = [(64, 4, 64, 4, 2), (32, 64, 128, 4, 2), (16, 128, 256, 3, 1),
       (16, 256, 512, 3, 1), (16, 512, 512, 4, 1), (15, 512, 1, 4, 1)]
  for i, (hin, cin, cout, k, s) in enumerate(d):
    rows.append((f'D.c{i + 1}', 'conv', hin, cin, cout, k, s, ((1, 1), (1, 1))))
  r = [('R.conv1', 224, 3, 64, 7, 2, 3), ('R.l1', 56, 64, 64, 3, 1, 1),
       ('R.l2a', 56, 64, 128, 3, 2, 1), ('R.l2b', 28, 128, 128, 3, 1, 1),
       ('R.l2ds', 56, 64, 128, 1, 2, 0), ('R.l3a', 28, 128, 256, 3, 2, 1),
       ('R.l3b', 14, 256, 256, 3, 1, 1), ('R.l3ds', 28, 128, 256, 1, 2, 0),
       ('R.l4a', 14, 256, 512, 3, 2, 1), ('R.l4b', 7, 512, 512, 3, 1, 1),
       ('R.l4ds', 14, 256, 512, 1, 2, 0)]
  for name, hin, cin, cout, k, s, p in r:
    rows.append((name, 'conv', hin, cin, cout, k, s, ((p, p), (p, p))))
  return rows


def flops(kind, hin, cin, cout, k, s, pad):
  if kind == 'convT':
    return 2 * hin * hin * cin * cout * k * k
  ho = (hin + pad[0][0] + pad[0][1] - k) // s + 1
  return 2 * ho * ho * cin * cout * k * k


def make_fns(impl, kind, k, s, pad, x_shape, w_shape):
  """jitted (forward, input grad, weight grad) of one form of the layer.

  `impl` names one form for all three passes, 'fast' for the per-pass
  forms `conv_impl.conv_forms` / `conv_transpose_forms` choose, or a
  kernel library `conv_impl` ('dnnl', 'winograd': its custom VJP).
  """
  if impl in ('dnnl', 'winograd'):
    layer = conv_lib.conv_transpose if kind == 'convT' else conv_lib.conv
    f = lambda x, w: layer(x, w, s, pad, impl)  # noqa: E731
    grads = lambda x, w, g: jax.vjp(f, x, w)[1](g.astype(x.dtype))  # noqa: E731
    return (jax.jit(f), jax.jit(lambda x, w, g: grads(x, w, g)[0]),
            jax.jit(lambda x, w, g: grads(x, w, g)[1]))
  if kind == 'convT':
    if impl == 'fast':
      f = conv_lib.conv_transpose_forms(x_shape)
    else:
      f = ({'s2d': 'phase'}.get(impl, impl),) * 3
    fwd = jax.jit(lambda x, w: conv_lib.TFORMS[f[0]](x, w, s, pad))
    dx = jax.jit(lambda x, w, g: conv_lib.conv_transpose_dx(
        f[1], x, w, g, s, pad))
    dw = jax.jit(lambda x, w, g: conv_lib.conv_transpose_dw(
        f[2], x, w, g, s, pad))
  else:
    if impl == 'fast':
      f = conv_lib.conv_forms(x_shape, w_shape, s, pad)
    else:
      f = (impl,) * 3
    fwd = jax.jit(lambda x, w: conv_lib.FORMS[f[0]](x, w, s, pad))
    dx = jax.jit(lambda x, w, g: conv_lib.conv_dx(f[1], x, w, g, s, pad))
    dw = jax.jit(lambda x, w, g: conv_lib.conv_dw(f[2], x, w, g, s, pad))
  return fwd, dx, dw


def time_fn(fn, args):
  """(wall s, process CPU s) of one call."""
  c, t = time.process_time(), time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t, time.process_time() - c


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--impls', default='xla')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--only', default='', help='comma list of layer prefixes')
  p.add_argument('--passes', default='fwd,dx,dw')
  p.add_argument('--json', default='')
  p.add_argument('--cores', type=int, default=2)
  p.add_argument('--xla_cpu_convolutions', default=xla_flags.DEFAULT,
                 help='XLA CPU convolution kernels (as the config key)')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                 help='the activations\' dtype (kernels stay float32)')
  a = p.parse_args()
  xla_flags.apply(a.xla_cpu_convolutions)  # before JAX starts, as main.py
  impls = a.impls.split(',')
  passes = a.passes.split(',')
  with open('/proc/loadavg') as f:
    print('loadavg', f.read().strip())
  out = []
  key = jax.random.key(0)
  for name, kind, hin, cin, cout, k, s, pad in layer_table():
    if a.only and not any(name.startswith(o) for o in a.only.split(',')):
      continue
    x = jax.random.normal(key, (a.batch, hin, hin, cin), jnp.float32).astype(
        a.dtype)
    w = jax.random.normal(key, (k, k, cin, cout), jnp.float32) * 0.05
    y = jax.eval_shape(
        lambda x, w: make_fns('xla', kind, k, s, pad, x.shape, w.shape)[0](
            x, w), jax.ShapeDtypeStruct(x.shape, jnp.float32), w)
    g = jnp.ones(y.shape, a.dtype)
    fl = flops(kind, hin, cin, cout, k, s, pad) * a.batch
    fns = {i: make_fns(i, kind, k, s, pad, x.shape, w.shape) for i in impls}
    times = {(i, ps): [] for i in impls for ps in passes}
    args = {'fwd': (x, w), 'dx': (x, w, g), 'dw': (x, w, g)}
    for i in impls:  # compile + warm
      for j, ps in enumerate(('fwd', 'dx', 'dw')):
        if ps in passes:
          time_fn(fns[i][j], args[ps])
    for _ in range(a.repeats):
      for ps in passes:
        j = ('fwd', 'dx', 'dw').index(ps)
        for i in impls:
          times[(i, ps)].append(time_fn(fns[i][j], args[ps]))
    row = {'layer': name, 'gflop': fl / 1e9}
    msg = f'{name:8s} {fl / 1e9:7.2f} GF'
    for ps in passes:
      for i in impls:
        m = statistics.median(t[0] for t in times[(i, ps)])
        c = statistics.median(t[1] for t in times[(i, ps)])
        row[f'{i}.{ps}_ms'] = m * 1e3
        row[f'{i}.{ps}_gflops'] = fl / m / 1e9
        # CPU-time rate on all cores: robust to other processes' load.
        row[f'{i}.{ps}_cpu_gflops'] = fl / (c / a.cores) / 1e9
        msg += f' | {ps} {i} {m * 1e3:6.1f}ms {fl / (c / a.cores) / 1e9:4.0f}'
    print(msg, flush=True)
    out.append(row)
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
