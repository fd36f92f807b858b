"""conv_impl: every convolution form equals flax's conv in value and grads."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
import helpers
from jaxcolor.runtime import checkpoint
from jaxcolor.runtime import op_profile
from jaxcolor import families
from jaxcolor import models
from jaxcolor.kernels import library
from jaxcolor.models import conv_impl
from jaxcolor.models import conv_transpose
from jaxcolor.runtime import xla_flags

KEY = jax.random.key(0, impl='rbg')
RTOL = 1e-5

# (side, C_in, C_out, kernel, stride, padding) as the model uses them.
CONVS = [
    (8, 3, 2, 4, 1, ((1, 2), (1, 2))),   # G d1 / u7: SAME, stride 1
    (8, 3, 5, 4, 2, ((1, 1), (1, 1))),   # G d2..d7, D conv1-2
    (4, 3, 5, 4, 2, ((1, 1), (1, 1))),   # 2x2 output (d6)
    (2, 6, 5, 4, 2, ((1, 1), (1, 1))),   # 1x1 output (d7)
    (6, 3, 1, 4, 1, ((1, 1), (1, 1))),   # D conv5-6 (shrinks by one)
    (9, 3, 4, 3, 2, ((1, 1), (1, 1))),   # odd side, odd kernel, stride 2
]
FORMS = ('xla', 'mm', 's2d')
TFORMS = ('phase', 'd2s', 'mm', 'xla')


def _rotations(forms):
  """(forward, input-grad, weight-grad) triples: each form in each pass."""
  n = len(forms)
  return [tuple(forms[(i + j) % n] for j in range(3)) for i in range(n)]


def _value_and_grads(fn, x, w, cot):
  y, vjp = jax.vjp(fn, x, w)
  return (y, *vjp(cot))


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _check_all(forms, ref, x, w):
  """Each `forms[impl](x, w)` against `ref` in value, input and weight
  grads; `ref` and every form in one compiled program (eager ops would
  compile one by one)."""
  cot = _normal(2, jax.eval_shape(ref, x, w).shape)
  want, got = jax.jit(lambda x, w, cot: (
      _value_and_grads(ref, x, w, cot),
      {impl: _value_and_grads(fn, x, w, cot) for impl, fn in forms.items()}))(
          x, w, cot)
  for impl, outs in got.items():
    for name, a, b in zip(('value', 'input grad', 'weight grad'), outs, want):
      assert a.shape == b.shape and a.dtype == b.dtype, (impl, name)
      err = helpers.rel_error(a, b)
      assert err < RTOL, (impl, name, err)


@pytest.mark.parametrize('shape', CONVS, ids=str)
def test_conv_forms_match_flax(shape):
  h, cin, cout, k, s, pad = shape
  x, w = _normal(0, (2, h, h, cin)), _normal(1, (k, k, cin, cout))
  ref = lambda x, w: nn.Conv(cout, (k, k), (s, s), pad, use_bias=False).apply(
      {'params': {'kernel': w}}, x)
  impls = _rotations(FORMS) + ['fast', 'mm', 'dnnl', 'winograd']
  if s == 1:  # the tap form is for stride 1
    impls += _rotations(('tap', 'xla', 'mm'))
  _check_all({str(impl): functools.partial(conv_impl.conv, stride=s,
                                           padding=pad, impl=impl)
              for impl in impls}, ref, x, w)


@pytest.mark.parametrize('side', [1, 2, 4, 5, 16])
def test_conv_transpose_forms_match_flax(side):
  pad = conv_transpose.transpose_padding(4, 2)
  x, w = _normal(0, (2, side, side, 3)), _normal(1, (4, 4, 3, 5))
  ref = lambda x, w: nn.ConvTranspose(5, (4, 4), (2, 2), pad,
                                      use_bias=False).apply(
                                          {'params': {'kernel': w}}, x)
  impls = _rotations(TFORMS) + ['fast', 'mm', 'dnnl', 'winograd']
  _check_all({str(impl): functools.partial(conv_impl.conv_transpose,
                                           stride=2, padding=pad, impl=impl)
              for impl in impls}, ref, x, w)


def test_mm_keeps_bfloat16_matmuls_in_bfloat16():
  """conv_impl='mm' in bfloat16: each pass of a conv, a tap-form conv and
  a transposed conv is a bfloat16 x bfloat16 -> float32 matmul, the one
  bfloat16 contraction jaxlib 0.10's CPU backend keeps in bfloat16 (on
  YNNPACK); values and grads are the float32 ones to bfloat16 precision."""
  pad_t = conv_transpose.transpose_padding(4, 2)

  def loss(impl, x, w, w1):
    y = conv_impl.conv(x, w, 2, ((1, 1), (1, 1)), impl)
    z = conv_impl.conv_transpose(y, jnp.swapaxes(w, 2, 3), 2, pad_t, impl)
    # One output channel, stride 1 (the critic's last conv): the tap form.
    z = conv_impl.conv(z, w1, 1, ((1, 1), (1, 1)), impl)
    return jnp.sum(z.astype(jnp.float32) ** 2)

  x, w = _normal(0, (2, 8, 8, 16)), _normal(1, (4, 4, 16, 32)) / 16
  w1 = _normal(2, (4, 4, 16, 1)) / 16
  grad = jax.grad(loss, argnums=(1, 2, 3))
  want = jax.jit(functools.partial(grad, 'xla'))(x, w, w1)
  bf16 = jax.jit(functools.partial(grad, 'mm'))
  x16 = x.astype(jnp.bfloat16)
  got = bf16(x16, w, w1)
  assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32
  for a, b in zip(got, want):
    assert helpers.rel_error(np.asarray(a, np.float32), b) < 2e-2
  dots, ynn, _ = helpers.compiled_matmuls(
      bf16.lower(x16, w, w1).compile().as_text())
  assert dots == [('f32', 'bf16', 'bf16')] * 9   # 3 layers x 3 passes
  assert ynn == 9


def test_mm_undifferentiated_moves_bfloat16_bits():
  """Where nothing differentiates it (the frozen ResNet branch), 'mm' in
  bfloat16 builds its patches on the bits: the same values as through
  float32, with no float32 concatenate; its matmul stays on YNNPACK."""
  x = _normal(0, (2, 8, 8, 16)).astype(jnp.bfloat16)
  w = _normal(1, (3, 3, 16, 32)) / 16
  pad = ((1, 1), (1, 1))
  frozen = jax.jit(lambda x, w: conv_impl.conv_matmul(x, w, 2, pad))
  through_f32 = jax.jit(
      lambda x, w: conv_impl.conv_mm(x, w, 2, pad, conv_impl.matmul))
  np.testing.assert_array_equal(frozen(x, w), through_f32(x, w))
  hlo = frozen.lower(x, w).compile().as_text()
  computations, _ = op_profile.parse_hlo(hlo)
  concats = {op.shape.split('[')[0] for body in computations.values()
             for op in body if op.opcode == 'concatenate'}
  assert concats == {'u16'}
  assert helpers.compiled_matmuls(hlo)[:2] == ([('f32', 'bf16', 'bf16')], 1)


def test_fast_forms_for_the_model_shapes():
  """The 'fast' choices the default model gets (documented per layer)."""
  forms = conv_impl.conv_forms
  p1, same = ((1, 1), (1, 1)), ((1, 2), (1, 2))
  assert forms((1, 64, 64, 64), (4, 4, 64, 128), 2, p1) == ('xla', 's2d', 'xla')
  assert forms((1, 16, 16, 512), (4, 4, 512, 512), 2, p1) == (
      'xla', 's2d', 'xla')                                   # d4
  assert forms((1, 8, 8, 512), (4, 4, 512, 512), 2, p1) == ('xla', 'mm', 'xla')
  assert forms((1, 4, 4, 512), (4, 4, 512, 512), 2, p1) == ('mm',) * 3
  assert forms((1, 64, 64, 128), (4, 4, 128, 4), 1, same) == (
      'tap', 'xla', 'tap')                                   # u7
  assert forms((1, 15, 15, 512), (4, 4, 512, 1), 1, p1) == (
      'tap', 'xla', 'tap')                                   # critic conv6
  assert forms((1, 16, 16, 512), (4, 4, 512, 512), 1, p1) == ('xla',) * 3
  assert conv_impl.conv_transpose_forms((1, 2, 2, 9)) == ('mm',) * 3
  assert conv_impl.conv_transpose_forms((1, 8, 8, 9)) == (
      'phase', 'phase', 'mm')
  assert conv_impl.conv_transpose_forms((1, 32, 32, 9)) == ('d2s',) * 3


def test_bad_impl_is_named():
  x, w = jnp.zeros((1, 4, 4, 1)), jnp.zeros((4, 4, 1, 1))
  with pytest.raises(ValueError, match='conv_impl'):
    conv_impl.conv(x, w, 2, ((1, 1), (1, 1)), 'nope')


def _gan_outputs(impl):
  mc = tiny.get_config().model
  mc.conv_impl = impl
  m = models.build_models(mc)
  x = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64, 2)).astype(
      np.float32)
  feats = _normal(4, (2, 2, 2, 512))
  # Jitted: flax's init run op by op compiles every op on its own.
  g_vars = jax.jit(m.generator.init)(KEY, x, feats)
  d_vars = jax.jit(m.critic.init)(KEY, jnp.zeros((2, 64, 64, 4)))

  def loss(g_params, d_params, x, feats):
    out = m.generator.apply({'params': g_params}, x, feats)
    d = m.critic.apply({'params': d_params},
                       jnp.concatenate([x[..., :1], out[..., :3]], -1))
    return jnp.mean(out ** 2) + jnp.mean(d), (out, d)

  grads, (out, d) = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3),
                                     has_aux=True))(
                                         g_vars['params'], d_vars['params'],
                                         x, feats)
  return g_vars, d_vars, out, d, grads


def test_whole_models_equal_across_impls():
  ref = _gan_outputs('xla')
  for impl in ('fast', 'dnnl'):
    got = _gan_outputs(impl)
    # Same parameter names, shapes and initial values.
    for a, b in zip(got[:2], ref[:2]):
      assert jax.tree.structure(a) == jax.tree.structure(b)
      jax.tree.map(np.testing.assert_array_equal, a, b)
    assert helpers.rel_error(got[2], ref[2]) < RTOL
    assert helpers.rel_error(got[3], ref[3]) < RTOL
    for a, b in zip(jax.tree.leaves(got[4]), jax.tree.leaves(ref[4])):
      assert a.shape == b.shape and helpers.rel_error(a, b) < 1e-4, impl


def test_auto_on_cpu_and_names_are_checked():
  # Tests run on CPUs: 'fast', or 'winograd' on those with AVX512-BF16.
  expected = ('winograd' if 'avx512_bf16' in xla_flags.cpu_features() else
              'fast')
  assert models.resolve_conv_impl('auto') == expected
  assert models.resolve_conv_impl('phase') == 'phase'
  assert models.resolve_conv_impl('mm') == 'mm'
  assert models.resolve_conv_impl('dnnl') == 'dnnl'  # built by the README
  assert models.resolve_conv_impl('winograd') == 'winograd'
  with pytest.raises(ValueError, match='conv_impl'):
    models.resolve_conv_impl('cudnn')


def test_auto_follows_a_measured_rule_by_dtype_and_cpu_flag(monkeypatch):
  """'auto' takes the first runnable form a (dtype, CPU flag) rule names,
  on CPUs with the flag and in that dtype only; build_models resolves it
  per compute dtype on this CPU's real flags."""
  rules = {('bfloat16', 'amx_bf16'): ('mm',)}
  amx = frozenset({'avx512f', 'amx_bf16'})
  resolve = models.resolve_conv_impl
  assert resolve('auto', jnp.bfloat16, amx, rules) == 'mm'
  assert resolve('auto', 'bfloat16', amx, rules) == 'mm'
  assert resolve('auto', jnp.float32, amx, rules) == 'fast'
  assert resolve('auto', jnp.bfloat16, frozenset({'avx2'}), rules) == 'fast'
  assert resolve('fast', jnp.bfloat16, amx, rules) == 'fast'  # explicit wins
  # The shipped rules: oneDNN's convolutions, wide stride-1 ones by
  # Winograd's method, in both dtypes where the CPU has AVX512-BF16; in
  # bfloat16 'mm' where the kernel library is not built, in float32 'fast'.
  zen4 = frozenset({'avx512f', 'avx512_bf16'})
  assert resolve('auto', jnp.bfloat16, zen4) == 'winograd'
  assert resolve('auto', jnp.float32, zen4) == 'winograd'
  # AMX: bfloat16 stays on oneDNN's direct convolutions (the AMX tiles).
  xeon = zen4 | {'amx_bf16', 'amx_tile'}
  assert resolve('auto', jnp.bfloat16, xeon) == 'dnnl'
  assert resolve('auto', jnp.float32, xeon) == 'winograd'
  assert resolve('auto', jnp.bfloat16, frozenset({'avx2', 'fma'})) == 'fast'
  assert resolve('auto', jnp.float32, frozenset({'avx2', 'fma'})) == 'fast'
  flag = sorted(xla_flags.cpu_features())[0]  # one this CPU has
  monkeypatch.setattr(models, 'FASTER_THAN_FAST',
                      {('bfloat16', flag): ('dnnl', 'mm')})
  mc = tiny.get_config().model
  mc.conv_impl = 'auto'
  bf16 = models.build_models(mc, jnp.bfloat16)
  assert (bf16.generator.conv_impl, bf16.critic.conv_impl,
          bf16.resnet.conv_impl) == ('dnnl',) * 3
  assert models.build_models(mc).generator.conv_impl == resolve('auto')
  # Without the kernel, under the shipped rules: the rule's next form, else
  # 'fast', and a one-line error for an explicit 'dnnl' or 'winograd'.
  monkeypatch.undo()
  monkeypatch.setattr(library, 'load', lambda: 'the kernel library is not '
                      'built: python -m jaxcolor.kernels.build')
  assert resolve('auto', jnp.bfloat16, zen4) == 'mm'
  assert resolve('auto', jnp.float32, zen4) == 'fast'
  for impl in ('dnnl', 'winograd'):
    with pytest.raises(ValueError, match=f"conv_impl='{impl}': the kernel "
                       'library is not built'):
      resolve(impl, jnp.bfloat16)


def test_a_checkpoint_resumes_under_another_conv_impl():
  config = tiny.get_config()
  # Built first, as a run is: the config it saves names the derived sizes.
  may_differ = families.build(config).resume_may_differ
  saved = config.to_dict()
  saved['model']['conv_impl'] = 'fast'
  checkpoint.check_compatible(saved, config, 'ckpt', may_differ)  # no error
  saved['model']['g_features'] = [4] * 7
  with pytest.raises(ValueError, match='g_features'):
    checkpoint.check_compatible(saved, config, 'ckpt', may_differ)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_add_bias_grads_are_float32_sums_without_reduce_window(dtype):
  """add_bias: JAX's forward; the bias grad summed in float32, to float32
  precision (JAX's own in bfloat16 is a reduce_window over a float32 copy
  on XLA's CPU backend, rounded to bfloat16)."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  y = jax.random.normal(k1, (4, 6, 5, 8)).astype(dtype)
  bias = jax.random.normal(k2, (8,))
  g = jax.random.normal(k3, (4, 6, 5, 8)).astype(dtype)
  np.testing.assert_array_equal(
      np.asarray(conv_impl.add_bias(y, bias), np.float32),
      np.asarray(y + bias.astype(dtype), np.float32))
  grads = jax.jit(lambda y, b, g: jax.vjp(conv_impl.add_bias, y, b)[1](g))
  gy, gb = grads(y, bias, g)
  assert gy.dtype == dtype and gb.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(gy, np.float32),
                                np.asarray(g, np.float32))
  want = np.asarray(g, np.float64).sum(axis=(0, 1, 2))
  np.testing.assert_allclose(np.asarray(gb), want, rtol=1e-5, atol=1e-5)
  if dtype == jnp.float32:  # JAX's own: the same sum
    own = jax.vjp(lambda b: y + b, bias)[1](g)[0]
    np.testing.assert_allclose(np.asarray(gb), np.asarray(own), rtol=1e-6,
                               atol=1e-6)
  assert 'reduce-window' not in grads.lower(y, bias, g).compile().as_text()
