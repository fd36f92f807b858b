"""The oneDNN convolution kernel (conv_impl='dnnl'): its build, its loading,
and its three passes against XLA's in both dtypes, on odd batches (split
over XLA's threads) and on several devices at once."""

import collections
import functools
import os
import subprocess
import sys

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import helpers
from jaxcolor.kernels import build
from jaxcolor.kernels import dnnl_conv
from jaxcolor.kernels import library
from jaxcolor.models import conv_transpose

DN = ('NHWC', 'HWIO', 'NHWC')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _normal(seed, shape, scale=1.0):
  return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(
      np.float32)


def _layers(impl, x, w, wt, w7):
  """A strided conv, a transposed conv back up, a stride-1 conv with
  asymmetric padding and a 7x7 stride-2 one: in x's dtype."""
  pad_t = conv_transpose.transpose_padding(4, 2)
  if impl == 'dnnl':
    conv, convt = dnnl_conv.conv, dnnl_conv.conv_transpose
  else:
    conv = lambda x, w, s, p: lax.conv_general_dilated(  # noqa: E731
        x, w.astype(x.dtype), (s, s), p, dimension_numbers=DN)
    convt = lambda x, w, s, p: lax.conv_transpose(  # noqa: E731
        x, w.astype(x.dtype), (s, s), p, dimension_numbers=DN)
  y = conv(x, w, 2, ((1, 1), (1, 1)))
  y = convt(y, wt, 2, pad_t)
  y = conv(y, w, 1, ((1, 2), (1, 2)))
  return conv(y, w7, 2, ((3, 3), (3, 3)))


def _loss(impl, x, w, wt, w7):
  return jnp.sum(_layers(impl, x, w, wt, w7).astype(jnp.float32) ** 2)


def _weights():
  return (_normal(1, (4, 4, 6, 6), 0.2), _normal(2, (4, 4, 6, 6), 0.2),
          _normal(3, (7, 7, 6, 5), 0.1))


@pytest.mark.parametrize('batch', [1, 3])
def test_values_and_grads_match_xla_in_both_dtypes(batch):
  """float32: XLA's to rounding; bfloat16: XLA's float32 to bfloat16
  precision, bfloat16 activations and input grads, float32 weight grads;
  each pass one custom call in the compute dtype. A second call, on other
  values, gets the first one's kernel blocks (packed weights, per-slice
  weight grads) back from the kernel's cache, as every training step does."""
  grad = jax.value_and_grad(_loss, argnums=(1, 2, 3, 4))

  @jax.jit
  def both(x, ws):
    x16 = x.astype(jnp.bfloat16)
    return (grad('xla', x, *ws), grad('dnnl', x, *ws),
            grad('dnnl', x16, *ws), _layers('dnnl', x16, *ws))

  for seed in (0, 10):
    x = _normal(seed, (batch, 8, 8, 6))
    ws = tuple(w * (1 + seed) for w in _weights())
    want, got32, got16, y16 = both(x, ws)
    for a, b in zip(jax.tree.leaves(got32), jax.tree.leaves(want)):
      assert a.dtype == b.dtype and helpers.rel_error(a, b) < 1e-5
    assert y16.dtype == jnp.bfloat16 and got16[1][0].dtype == jnp.bfloat16
    assert {g.dtype for g in got16[1][1:]} == {jnp.dtype('float32')}
    for a, b in zip(jax.tree.leaves(got16), jax.tree.leaves(want)):
      assert helpers.rel_error(a, b) < 3e-2
  calls = collections.Counter(
      helpers.dnnl_calls(both.lower(x, ws).compile().as_text()))
  # Per dtype, 4 layers x (forward, input grad, weight grad): a transposed
  # conv's forward is a conv's input grad and its input grad a conv's
  # forward; weight grads are float32. The bfloat16 forward alone is the
  # value_and_grad's (XLA computes it once).
  assert calls == {('f32', 'fwd'): 4, ('f32', 'bwd_data'): 4,
                   ('bf16', 'fwd'): 4, ('bf16', 'bwd_data'): 4,
                   ('f32', 'bwd_weights'): 8}, calls


@pytest.mark.parametrize('batch', [1, 3])
def test_weight_grads_larger_than_the_activations_match_xla(batch):
  """A deep layer at a few pixels: the kernel splits its weight grad over
  output channels (one share of the 64 per thread of XLA's pool) instead of
  over the batch; both dtypes against XLA's float32."""
  x = _normal(5, (batch, 4, 4, 48))
  w = _normal(6, (4, 4, 48, 64), 0.05)
  dy = _normal(7, (batch, 2, 2, 64))

  def weight_grad(impl, x, w):
    if impl == 'dnnl':
      conv = dnnl_conv.conv
    else:
      conv = lambda x, w, s, p: lax.conv_general_dilated(  # noqa: E731
          x, w.astype(x.dtype), (s, s), p, dimension_numbers=DN)
    _, vjp = jax.vjp(lambda w: conv(x, w, 2, ((1, 1), (1, 1))), w)
    return vjp(dy.astype(x.dtype))[0]

  want = jax.jit(functools.partial(weight_grad, 'xla'))(x, w)
  got32 = jax.jit(functools.partial(weight_grad, 'dnnl'))(x, w)
  got16 = jax.jit(functools.partial(weight_grad, 'dnnl'))(
      x.astype(jnp.bfloat16), w)
  assert got32.dtype == got16.dtype == jnp.float32
  assert helpers.rel_error(got32, want) < 1e-5
  assert helpers.rel_error(got16, want) < 3e-2


def test_runs_on_every_device_at_once():
  """One step per device under shard_map, compiled as the trainer's are
  (check_vma=False): each device's custom calls run side by side on the
  host's threads."""
  devices = jax.devices()
  assert len(devices) == 4  # conftest's forced host devices
  mesh = Mesh(np.array(devices), ('data',))
  x = _normal(0, (8, 8, 8, 6))
  ws = _weights()
  grad = jax.grad(_loss, argnums=(2, 3, 4))

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P('data'), P()),
                     out_specs=P(), check_vma=False)
  def per_device(x, ws):
    return jax.lax.psum(grad('dnnl', x.astype(jnp.bfloat16), *ws), 'data')

  got = per_device(x, ws)
  want = jax.jit(functools.partial(grad, 'xla'))(x, *ws)
  for a, b in zip(got, want):
    assert helpers.rel_error(a, b) < 3e-2


def test_an_empty_batch_gives_empty_outputs_and_zero_weight_grads():
  x = jnp.ones((0, 8, 8, 6), jnp.bfloat16)
  y, grads = jax.jit(jax.value_and_grad(_loss, argnums=(1, 2, 3, 4)),
                     static_argnums=0)('dnnl', x, *_weights())
  assert float(y) == 0.0 and grads[0].shape == x.shape
  assert all(not np.any(np.asarray(g)) for g in grads[1:])


def test_bad_operands_are_a_clear_error():
  """The kernel checks what XLA hands it: an integer operand is an error
  with the kernel's message, not a crash."""
  x = jnp.ones((1, 4, 4, 2), jnp.int32)
  w = jnp.ones((3, 3, 2, 2), jnp.int32)
  with pytest.raises(Exception, match='operands float32 or bfloat16'):
    jax.block_until_ready(dnnl_conv.conv_fwd(x, w, 1, ((1, 1), (1, 1)),
                                              jnp.float32))


def test_load_says_why_it_cannot(monkeypatch, tmp_path):
  """A missing, damaged or foreign library: load() returns the one-line reason
  (resolve_conv_impl turns it into config errors and 'auto' falls back)."""
  load = library.load.__wrapped__  # uncached; registers nothing here
  monkeypatch.setattr(library, 'LIBRARY', str(tmp_path / 'missing.so'))
  assert 'not built' in load() and 'jaxcolor.kernels.build' in load()
  assert 'pip install -r requirements.txt' in load()
  damaged = tmp_path / 'damaged.so'
  damaged.write_bytes(b'\x7fELF' + os.urandom(64))
  monkeypatch.setattr(library, 'LIBRARY', str(damaged))
  assert 'does not load' in load() and '\n' not in load()
  # A real shared library that is not this one (oneDNN's own).
  monkeypatch.setattr(library, 'LIBRARY',
                      os.path.join(build.find_onednn()[1], 'libdnnl.so'))
  assert 'does not load' in load() and 'JaxcolorDnnlConv' in load()
  assert library.load() == ''  # the real one (cached) is built and loads


@pytest.mark.parametrize('args,message', [
    (['--onednn=/nonexistent'], 'oneDNN not found (looked in /nonexistent)'),
    (['--cxx=no-such-compiler'], "no C++ compiler 'no-such-compiler'"),
])
def test_build_errors_are_one_line(args, message):
  p = subprocess.run([sys.executable, '-m', 'jaxcolor.kernels.build', *args],
                     capture_output=True, text=True, cwd=ROOT, check=False)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 1 and len(lines) == 1, p.stderr
  assert lines[0].startswith('jaxcolor.kernels.build: ') and message in lines[0]


def test_build_finds_the_environments_onednn():
  include, lib = build.find_onednn()
  assert os.path.exists(os.path.join(include, 'oneapi', 'dnnl', 'dnnl.hpp'))
  assert os.path.exists(os.path.join(lib, 'libdnnl.so'))
  cmd = build.command('g++', '/ffi', include, lib, '/out.so')
  assert cmd[-2:] == ['-o', '/out.so'] and f'-Wl,-rpath,{lib}' in cmd
