"""Generator and PatchGAN: layer shapes, ranges, init, params, FLOPs."""

import os

from clu import parameter_overview
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import tiny
from jaxcolor import models
from jaxcolor.models import conv_impl
from jaxcolor.models import conv_transpose

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures',
                       'resnet18_golden.npz')
# rbg keys: XLA compiles threefry initialisers very slowly on CPU (~1 s each).
KEY = jax.random.key(0, impl='rbg')

# Peer (PyTorch) figures: parameters, and forward GFLOP per image counted as
# 2 x multiply-adds of every conv over all output positions (padding included).
PEER_G_PARAMS, PEER_D_PARAMS = 50_215_300, 5_813_697
PEER_G_GFLOP, PEER_D_GFLOP = 3.062, 2.721


def _model_config(size=64, **overrides):
  """The paper's model section at `size` px, its derived keys resolved."""
  mc = default.get_config().model
  for k, v in overrides.items():
    setattr(mc, k, v)
  return models.resolve_sizes(mc, size)


def _g_inputs(mc, size, batch=1):
  x = jnp.zeros((batch, size, size, 1 + int(mc.use_edge)), jnp.float32)
  feats = None
  if mc.use_resnet:
    side = size // 2 ** (mc.fusion_layer - int(
        0 < mc.g_stride1_layer <= mc.fusion_layer))
    feats = jnp.zeros((batch, side, side, 512), jnp.float32)
  return x, feats


def _layer_shapes(module, params, *args):
  """{'down1': (B,H,W,C), ...} of every direct submodule, without compute."""
  def run(p):
    return module.apply(p, *args, capture_intermediates=True,
                        mutable=['intermediates'])
  _, state = jax.eval_shape(run, params)
  return {name: v['__call__'][0].shape
          for name, v in state['intermediates'].items() if name != '__call__'}


def _conv_flops(module, params, *args):
  """Analytic forward FLOPs (2 x MACs, padded positions counted, as the peer).

  A conv does k*k*Cin*Cout MACs per output position, a transposed conv per
  input position (what PyTorch's FLOP counter counts).
  """
  flops = []

  def count(next_fun, call_args, kwargs, context):
    out = next_fun(*call_args, **kwargs)
    m = context.module
    transposed_types = (conv_impl.ConvTranspose,)
    if isinstance(m, (nn.Conv, conv_impl.Conv) + transposed_types):
      x = call_args[0]
      transposed = isinstance(m, transposed_types)
      where = x if transposed else out
      k = m.kernel_size
      taps = k ** 2 if isinstance(k, int) else int(np.prod(k))
      macs = (taps * x.shape[-1] * m.features *
              int(np.prod(where.shape[:-1])))
      flops.append(2 * macs)
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(module.apply, params, *args)
  return sum(flops)


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return cost['flops']


def test_generator_layer_table_64px():
  mc = _model_config()
  gen = models.build_models(mc).generator
  x, feats = _g_inputs(mc, 64)
  params = jax.eval_shape(gen.init, KEY, x, feats)
  shapes = _layer_shapes(gen, params, x, feats)
  sides = [64, 32, 16, 8, 4, 2, 1, 2, 4, 8, 16, 32, 64, 64]
  widths = [64, 128, 256, 512, 512, 512, 512, 512, 512, 512, 256, 128, 64, 4]
  names = [f'down{i}' for i in range(1, 8)] + [f'up{i}' for i in range(1, 8)]
  assert shapes == {n: (1, s, s, c) for n, s, c in zip(names, sides, widths)}
  # Input widths of the decoder show the skips (d6 carries the fusion).
  cin = {n: params['params'][n]['kernel'].shape[2] for n in names}
  assert [cin[f'up{i}'] for i in range(1, 8)] == [
      512, 1536, 1024, 1024, 512, 256, 128]
  assert cin['down7'] == 1024


def test_generator_layer_table_128px():
  mc = _model_config(128)
  gen = models.build_models(mc).generator
  x, feats = _g_inputs(mc, 128)
  assert feats.shape == (1, 2, 2, 512)
  params = jax.eval_shape(gen.init, KEY, x, feats)
  shapes = _layer_shapes(gen, params, x, feats)
  sides = [64, 32, 16, 8, 4, 2, 1, 2, 4, 8, 16, 32, 64, 128]
  assert [shapes[f'down{i}'][1] for i in range(1, 8)] + [
      shapes[f'up{i}'][1] for i in range(1, 8)] == sides
  assert shapes['up7'] == (1, 128, 128, 4)
  # Same parameter count as at 64 px: only strides change.
  assert parameter_overview.count_parameters(params) == PEER_G_PARAMS


def test_generator_stride1_in_the_middle_and_no_extras():
  mc = _model_config(g_stride1_layer=3, use_resnet=False, use_edge=False,
                     saliency_head=False, g_features=(8, 8, 8, 8, 8, 8, 8))
  gen = models.build_models(mc).generator
  x, feats = _g_inputs(mc, 64)
  assert feats is None
  params = jax.eval_shape(gen.init, KEY, x)
  shapes = _layer_shapes(gen, params, x)
  sides = [shapes[f'down{i}'][1] for i in range(1, 8)]
  assert sides == [32, 16, 16, 8, 4, 2, 1]
  assert shapes['up5'][1:3] == (16, 16) and shapes['up7'] == (1, 64, 64, 3)
  assert 'kernel' in params['params']['up5']  # the stride-1 mirror is a Conv


def test_patchgan_layer_table():
  critic = models.build_models(_model_config()).critic
  x = jnp.zeros((1, 64, 64, 4))
  params = jax.eval_shape(critic.init, KEY, x)
  shapes = _layer_shapes(critic, params, x)
  assert shapes == {'conv1': (1, 32, 32, 64), 'conv2': (1, 16, 16, 128),
                    'conv3': (1, 16, 16, 256), 'conv4': (1, 16, 16, 512),
                    'conv5': (1, 15, 15, 512), 'conv6': (1, 14, 14, 1)}
  assert jax.eval_shape(critic.apply, params, jnp.zeros((3, 128, 128, 4))
                        ).shape == (3, 30, 30, 1)


def test_parameter_counts_match_the_peer():
  mc = _model_config()
  m = models.build_models(mc)
  x, feats = _g_inputs(mc, 64)
  g = jax.eval_shape(m.generator.init, KEY, x, feats)['params']
  d = jax.eval_shape(m.critic.init, KEY, jnp.zeros((1, 64, 64, 4)))['params']
  r = jax.eval_shape(lambda: m.resnet.init(
      KEY, jnp.zeros((1, 32, 32, 3)), return_logits=True))['params']
  n_g, n_d, n_r = (parameter_overview.count_parameters(p) for p in (g, d, r))
  print(f'\nparameters: G {n_g:,}  D {n_d:,}  ResNet-18 {n_r:,}')
  print(parameter_overview.get_parameter_overview(d, include_stats=False))
  assert (n_g, n_d, n_r) == (PEER_G_PARAMS, PEER_D_PARAMS, 11_689_512)


def test_forward_flops():
  """Analytic FLOPs equal the peer's; XLA's cost analysis skips padded taps.

  (conv_impl='xla': the 'fast' forms' patch matmuls count padded taps too.)
  """
  mc = _model_config(conv_impl='xla')
  m = models.build_models(mc)
  x, feats = _g_inputs(mc, 64)
  d_in = jnp.zeros((1, 64, 64, 4))
  g = jax.eval_shape(m.generator.init, KEY, x, feats)
  d = jax.eval_shape(m.critic.init, KEY, d_in)
  g_analytic = _conv_flops(m.generator, g, x, feats) / 1e9
  d_analytic = _conv_flops(m.critic, d, d_in) / 1e9
  g_xla = _xla_flops(lambda p: m.generator.apply(p, x, feats), g) / 1e9
  d_xla = _xla_flops(lambda p: m.critic.apply(p, d_in), d) / 1e9
  print(f'\nGFLOP/image forward at 64 px: G analytic {g_analytic:.3f} '
        f'XLA {g_xla:.3f} (peer {PEER_G_GFLOP}); D analytic {d_analytic:.3f} '
        f'XLA {d_xla:.3f} (peer {PEER_D_GFLOP})')
  assert g_analytic == pytest.approx(PEER_G_GFLOP, abs=1e-3)
  assert d_analytic == pytest.approx(PEER_D_GFLOP, abs=1e-3)
  # XLA counts only taps that land on real (unpadded, undilated) input.
  assert 0.85 * g_analytic < g_xla < g_analytic
  assert 0.9 * d_analytic < d_xla < d_analytic


def test_tiny_models_run_and_stay_in_range():
  mc = tiny.get_config().model
  m = models.build_models(mc)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 64, 64, 2)), jnp.float32) * 50.0
  feats = jnp.asarray(rng.normal(size=(2, 2, 2, 512)) * 50.0, jnp.float32)
  g = jax.jit(m.generator.init)(KEY, x, feats)
  out = jax.jit(m.generator.apply)(g, x, feats)
  assert out.shape == (2, 64, 64, 4) and out.dtype == jnp.float32
  assert float(jnp.min(out)) >= -1.0 and float(jnp.max(out)) <= 1.0
  assert float(jnp.max(jnp.abs(out))) > 0.5  # large inputs reach the tails
  d_in = jnp.concatenate([x[..., :1], out[..., :3]], axis=-1) * 50.0
  d = jax.jit(m.critic.init)(KEY, d_in)
  p = jax.jit(m.critic.apply)(d, d_in)
  assert p.shape == (2, 14, 14, 1) and p.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(p)))  # logits: the objective maps them


def test_bfloat16_compute_keeps_float32_params():
  mc = tiny.get_config().model
  m = models.build_models(mc, dtype='bfloat16')
  x = jnp.ones((1, 64, 64, 2))
  feats = jnp.ones((1, 2, 2, 512))
  g = jax.eval_shape(m.generator.init, KEY, x, feats)
  assert {a.dtype for a in jax.tree.leaves(g)} == {jnp.dtype('float32')}
  assert jax.eval_shape(m.generator.apply, g, x, feats).dtype == jnp.float32
  d = jax.eval_shape(m.critic.init, KEY, jnp.ones((1, 64, 64, 4)))
  assert {a.dtype for a in jax.tree.leaves(d)} == {jnp.dtype('float32')}


def test_xavier_uniform_kernels_and_zero_biases():
  mc = tiny.get_config().model
  m = models.build_models(mc)
  g = jax.jit(m.generator.init)(KEY, jnp.ones((1, 64, 64, 2)),
                                jnp.ones((1, 2, 2, 512)))
  for name, layer in g['params'].items():
    k = np.asarray(layer['kernel'])
    fan_in = k.shape[0] * k.shape[1] * k.shape[2]
    fan_out = k.shape[0] * k.shape[1] * k.shape[3]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(k).max() <= limit, name
    assert np.abs(k).max() > 0.8 * limit, name  # uniform over the full range
    assert not np.any(layer['bias']), name


def test_generator_rejects_bad_inputs():
  mc = tiny.get_config().model
  gen = models.build_models(mc).generator
  x = jnp.ones((1, 64, 64, 2))
  init = lambda g, *a: jax.eval_shape(g.init, KEY, *a)  # noqa: E731
  with pytest.raises(ValueError, match='features must be given'):
    init(gen, x)
  with pytest.raises(ValueError, match='fusion_size to 2'):
    init(gen, x, jnp.ones((1, 7, 7, 512)))
  with pytest.raises(ValueError, match='divisible by 64'):
    init(gen, jnp.ones((1, 48, 48, 2)), jnp.ones((1, 2, 2, 512)))
  mc.g_stride1_layer = 9
  with pytest.raises(ValueError, match='g_stride1_layer=9'):
    init(models.build_models(mc).generator, x, jnp.ones((1, 2, 2, 512)))


def test_padding_matches_pytorch_layers():
  """Our ConvTranspose (pad 2,2) == torch ConvTranspose2d(4, 2, padding=1);
  Conv SAME (pad 1,2) == F.pad(1,2,1,2) + Conv2d(4). Golden torch outputs."""
  z = np.load(FIXTURE)
  w = z['convT_weight']  # (in, out, kh, kw); torch flips it relative to lax
  kernel = np.ascontiguousarray(w.transpose(2, 3, 0, 1)[::-1, ::-1])
  layer = conv_impl.ConvTranspose(
      4, 4, 2, padding=conv_transpose.transpose_padding(4, 2), impl='phase')
  out = layer.apply({'params': {'kernel': kernel, 'bias': z['convT_bias']}},
                    z['convT_input'])
  assert out.shape == (1, 10, 10, 4)
  np.testing.assert_allclose(out, z['convT_output'], atol=1e-5)
  layer = nn.Conv(4, (4, 4), padding=models.generator.same_padding(4, 1))
  kernel = z['same_weight'].transpose(2, 3, 1, 0)
  out = layer.apply({'params': {'kernel': kernel, 'bias': z['same_bias']}},
                    z['same_input'])
  np.testing.assert_allclose(out, z['same_output'], atol=1e-5)
  assert conv_transpose.transpose_padding(4, 2) == ((2, 2), (2, 2))
  assert models.generator.same_padding(4, 2) == ((1, 1), (1, 1))
  assert models.generator.same_padding(4, 1) == ((1, 2), (1, 2))


@pytest.mark.parametrize('kernel,stride', [(4, 2), (3, 2), (5, 2), (4, 1),
                                           (6, 3)])
def test_phase_conv_transpose_equals_lax(kernel, stride):
  """Value and gradients equal lax.conv_transpose (what nn.ConvTranspose runs)."""
  pad = conv_transpose.transpose_padding(kernel, stride)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 6, 3), np.float32)
  w = rng.standard_normal((kernel, kernel, 3, 4), np.float32)
  ref = lambda x, w: jax.lax.conv_transpose(  # noqa: E731
      x, w, (stride, stride), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = lambda x, w: conv_transpose.conv_transpose(x, w, stride, pad)  # noqa: E731
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731

  @jax.jit  # one program: op-by-op calls would each compile on their own
  def both(x, w):
    return [(f(x, w), jax.grad(loss(f), (0, 1))(x, w)) for f in (ours, ref)]
  (y_ours, g_ours), (y_ref, g_ref) = both(x, w)
  np.testing.assert_allclose(y_ours, y_ref, atol=1e-5)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4)
