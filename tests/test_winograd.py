"""Winograd convolutions (jaxcolor/kernels/winograd.py, conv_impl='winograd'):
the transforms, both kernel passes and the custom VJP against XLA's
convolutions in both dtypes, which layers take them, and their errors."""

import collections
import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from configs import default
import helpers
from jaxcolor import models
from jaxcolor.kernels import winograd
from jaxcolor.models import conv_impl

DN = ('NHWC', 'HWIO', 'NHWC')


def _normal(seed, shape, scale=1.0):
  return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(
      np.float32)


def _calls(hlo_text):
  """(result dtype, pass) of each Winograd custom call, in program order."""
  return helpers.dnnl_calls(hlo_text, 'jaxcolor_winograd_')


@pytest.mark.parametrize('m,r', [(4, 3), (3, 4), (2, 3), (2, 4)])
def test_the_transform_computes_a_correlation(m, r):
  """A^T [(G g) * (B^T d)] = sum_k g[k] d[i + k], to float32 rounding."""
  at, g, bt = transform = winograd.transform(m, r)
  assert [a.shape for a in transform] == [(m, m + r - 1), (m + r - 1, r),
                                          (m + r - 1, m + r - 1)]
  rng = np.random.default_rng(0)
  for _ in range(3):
    d, k = rng.standard_normal(m + r - 1), rng.standard_normal(r)
    want = np.array([k @ d[i:i + r] for i in range(m)])
    got = at.astype(np.float64) @ ((g @ k) * (bt @ d))
    np.testing.assert_allclose(got, want, atol=1e-5)


def _conv(impl, x, w, padding):
  if impl == 'winograd':
    return winograd.conv(x, w, padding)
  return lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), padding,
                                  dimension_numbers=DN,
                                  precision=lax.Precision.HIGHEST)


def _loss(impl, x, w3, w4):
  """A 3x3 conv then a 4x4 one with asymmetric padding, on a non-square
  image whose sides are no multiple of the tiles."""
  y = _conv(impl, x, w3, ((1, 1), (1, 1)))
  y = _conv(impl, y, w4, ((1, 2), (2, 1)))
  return jnp.sum(y.astype(jnp.float32) ** 2), y


@pytest.mark.parametrize('batch', [1, 3])
def test_values_and_grads_match_xla_in_both_dtypes(batch):
  """float32 to 2e-5 of XLA's; bfloat16 activations to bfloat16 precision
  (the transforms and matmuls run in float32, so no worse than a direct
  bfloat16 convolution), weight grads float32. Per dtype and layer one
  forward call, one for the input grad (a forward of dy with the flipped
  kernel) and one weight grad. A second call, on other values, gets the
  first one's blocks back from the kernel's cache."""
  grad = jax.value_and_grad(_loss, argnums=(1, 2, 3), has_aux=True)

  @jax.jit
  def both(x, w3, w4):
    x16 = x.astype(jnp.bfloat16)
    return (grad('xla', x, w3, w4), grad('winograd', x, w3, w4),
            grad('winograd', x16, w3, w4))

  for seed in (0, 10):
    x = _normal(seed, (batch, 7, 10, 5))
    w3 = _normal(seed + 1, (3, 3, 5, 6), 0.3)
    w4 = _normal(seed + 2, (4, 4, 6, 4), 0.2)
    (want, want_grads), (got32, grads32), (got16, grads16) = both(x, w3, w4)
    assert got32[1].shape == want[1].shape == (batch, 7, 10, 4)
    assert helpers.rel_error(got32[1], want[1]) < 2e-5
    for a, b in zip(grads32, want_grads):
      assert a.dtype == b.dtype and helpers.rel_error(a, b) < 2e-5
    assert got16[1].dtype == grads16[0].dtype == jnp.bfloat16
    assert {g.dtype for g in grads16[1:]} == {jnp.dtype('float32')}
    assert helpers.rel_error(got16[1], want[1]) < 3e-2
    for a, b in zip(grads16, want_grads):
      assert helpers.rel_error(a, b) < 3e-2
  calls = collections.Counter(_calls(both.lower(x, w3, w4).compile().as_text()))
  assert calls == {('f32', 'fwd'): 4, ('bf16', 'fwd'): 4,
                   ('f32', 'bwd_weights'): 4}, calls


def test_tiles_in_chunks_give_the_same_values():
  """A call goes through its tiles a chunk at a time (its scratch bounded
  at large images): chunks of one tile, of a few and of all give the same
  forward and weight grad (summed over the chunks: to float32 rounding),
  in both dtypes."""
  x, w = _normal(0, (3, 7, 10, 5)), _normal(1, (4, 4, 5, 6), 0.2)
  pad = ((1, 2), (2, 1))
  dy = _normal(2, (3, 7, 10, 6))

  @jax.jit
  def passes(x, w, dy):
    return {size: (winograd.conv_fwd(x, w, pad, x.dtype, chunk_bytes=size),
                   winograd.conv_bwd_weights(x, dy.astype(x.dtype), pad,
                                             w.shape, chunk_bytes=size))
            for size in (1, 36 * 6 * 4 * 5, winograd.CHUNK_BYTES)}

  for dtype in (jnp.float32, jnp.bfloat16):
    got = passes(x.astype(dtype), w, dy)
    whole = got[winograd.CHUNK_BYTES]
    for size in (1, 36 * 6 * 4 * 5):  # one tile per chunk; five per chunk
      np.testing.assert_array_equal(got[size][0], whole[0])
      assert helpers.rel_error(got[size][1], whole[1]) < 1e-5


def test_conv_impl_winograd_takes_the_layers_where_it_pays():
  """In float32, stride-1 3x3 and 4x4 convolutions of 64 or more channels
  in and out; every other convolution (strided, 7x7, narrow) and every
  transposed one stays on oneDNN's direct kernel. Values as XLA's."""
  wide, narrow = _normal(1, (3, 3, 64, 64), 0.05), _normal(2, (4, 4, 64, 8))
  strided = _normal(3, (4, 4, 64, 64), 0.05)

  def layers(impl, x):
    y = conv_impl.conv(x, wide, 1, ((1, 1), (1, 1)), impl)
    z = conv_impl.conv(y, strided, 2, ((1, 1), (1, 1)), impl)
    z = conv_impl.conv_transpose(z, strided, 2, ((2, 2), (2, 2)), impl)
    return conv_impl.conv(z + y, narrow, 1, ((1, 2), (1, 2)), impl)

  x = _normal(0, (2, 8, 8, 64))
  run = jax.jit(layers, static_argnums=0)
  assert helpers.rel_error(run('winograd', x), run('xla', x)) < 2e-5
  hlo = run.lower('winograd', x).compile().as_text()
  assert _calls(hlo) == [('f32', 'fwd')]
  assert sorted(helpers.dnnl_calls(hlo)) == [('f32', 'bwd_data'),
                                             ('f32', 'fwd'), ('f32', 'fwd')]
  pays = conv_impl.winograd_pays
  assert pays((4, 4, 512, 512), 1) and pays((3, 3, 64, 128), 1)
  assert not pays((4, 4, 512, 512), 2)
  assert not pays((7, 7, 512, 512), 1)
  assert not pays((3, 3, 512, 32), 1)
  # In bfloat16 only the widest layers (oneDNN's direct convolution runs on
  # the bfloat16 units there).
  assert pays((3, 3, 256, 512), 1, jnp.bfloat16)
  assert not pays((3, 3, 128, 256), 1, jnp.bfloat16)


def test_runs_on_every_device_at_once():
  devices = jax.devices()
  assert len(devices) == 4  # conftest's forced host devices
  mesh = Mesh(np.array(devices), ('data',))
  x, w3, w4 = (_normal(0, (8, 6, 6, 5)), _normal(1, (3, 3, 5, 6), 0.3),
               _normal(2, (4, 4, 6, 4), 0.2))
  grad = lambda impl, *a: jax.grad(  # noqa: E731
      lambda *a: _loss(impl, *a)[0], argnums=(1, 2))(*a)

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P('data'), P(), P()),
                     out_specs=P(), check_vma=False)
  def per_device(x, w3, w4):
    return jax.lax.psum(grad('winograd', x, w3, w4), 'data')

  for a, b in zip(per_device(x, w3, w4), jax.jit(grad, static_argnums=0)(
      'xla', x, w3, w4)):
    assert helpers.rel_error(a, b) < 2e-5


def test_an_empty_batch_gives_empty_outputs_and_zero_weight_grads():
  x = jnp.ones((0, 6, 6, 5))
  w3, w4 = _normal(1, (3, 3, 5, 6)), _normal(2, (4, 4, 6, 4))
  (loss, y), grads = jax.jit(
      jax.value_and_grad(_loss, argnums=(1, 2, 3), has_aux=True),
      static_argnums=0)('winograd', x, w3, w4)
  assert float(loss) == 0.0 and y.shape == (0, 6, 6, 4)
  assert grads[0].shape == x.shape
  assert all(not np.any(np.asarray(g)) for g in grads[1:])


def test_bad_operands_are_a_clear_error():
  """The kernel checks what XLA hands it: an integer activation, a
  bfloat16 kernel or matrices that do not fit the kernel are errors with
  the kernel's message, not a crash."""
  pad = ((1, 1), (1, 1))
  w = jnp.ones((3, 3, 2, 2))
  with pytest.raises(Exception, match='activations float32 or bfloat16'):
    jax.block_until_ready(winograd.conv_fwd(jnp.ones((1, 4, 4, 2), jnp.int32),
                                            w, pad, jnp.float32))
  with pytest.raises(Exception, match='kernel .* is float32'):
    jax.block_until_ready(winograd.conv_fwd(
        jnp.ones((1, 4, 4, 2)), w.astype(jnp.bfloat16), pad, jnp.float32))
  at, g, bt = winograd.transform(3, 4)  # a 4x4 kernel's, for a 3x3 one
  with pytest.raises(Exception, match='do not fit the kernel'):
    jax.block_until_ready(jax.ffi.ffi_call(
        'jaxcolor_winograd_fwd', jax.ShapeDtypeStruct((1, 4, 4, 2),
                                                      jnp.float32))(
            jnp.ones((1, 4, 4, 2)), w, at=at.ravel(), g=g.ravel(),
            bt=bt.ravel(), pad_top=np.int64(1), pad_bottom=np.int64(1),
            pad_left=np.int64(1), pad_right=np.int64(1), flip=np.int64(0),
            chunk_bytes=np.int64(winograd.CHUNK_BYTES)))


def test_the_papers_critic_equals_xlas():
  """The paper's PatchGAN at its full widths (configs/default.py): its
  three wide stride-1 convolutions on Winograd's method, the rest on
  oneDNN; its output and every gradient as with XLA's convolutions. With
  its leaky ReLUs linear (slope 1): at a kink a value's rounding picks the
  slope, so a few-ulp difference anywhere (XLA's own, on an input perturbed
  by 4e-6) moves this critic's gradients by 1e-4 to 2e-3."""
  mc = helpers.override(default.get_config().model, conv_impl='winograd',
                        require_resnet18_weights=False)
  critic = {impl: models.build_models(helpers.override(
      mc.copy_and_resolve_references(), conv_impl=impl)).critic.clone(
          negative_slope=1.0) for impl in ('xla', 'winograd')}
  x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 4)).astype(
      np.float32)
  params = jax.jit(critic['xla'].init)(jax.random.PRNGKey(0), x)['params']

  def value_and_grads(impl, params, x):
    def loss(params, x):
      d = critic[impl].apply({'params': params}, x)
      return jnp.sum(d ** 2), d
    return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)

  run = jax.jit(value_and_grads, static_argnums=0)
  (want_grads, want), (got_grads, got) = run('xla', params, x), run(
      'winograd', params, x)
  assert helpers.rel_error(got, want) < 2e-5
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    assert a.shape == b.shape and helpers.rel_error(a, b) < 3e-5
  hlo = run.lower('winograd', params, x).compile().as_text()
  assert collections.Counter(_calls(hlo)) == {('f32', 'fwd'): 6,
                                              ('f32', 'bwd_weights'): 3}
