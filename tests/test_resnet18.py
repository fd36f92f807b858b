"""ResNet-18 branch: torchvision parity, fusion path, converter, freezing."""

import importlib.util
import logging
import os

from absl import logging as absl_logging
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

from configs import tiny
import helpers
from jaxcolor import models
from jaxcolor.models import conv_impl
from jaxcolor.models import convert_resnet18
from jaxcolor.models import resnet18

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
# rbg keys: XLA compiles threefry initialisers very slowly on CPU (~1 s each).
KEY = jax.random.key(0, impl='rbg')
PEER_RESNET_GFLOP = 3.627  # layer4 features at 224 px, convs, 2 x MACs


def _golden_module():
  path = os.path.join(FIXTURES, 'make_resnet18_golden.py')
  spec = importlib.util.spec_from_file_location('make_resnet18_golden', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


golden = _golden_module()


@pytest.fixture(scope='module')
def fixture():
  return dict(np.load(os.path.join(FIXTURES, 'resnet18_golden.npz')))


@pytest.fixture(scope='module')
def seeded(fixture):
  """The fixture's weights, rebuilt from the seed (numpy, no torch)."""
  return golden.seeded_state_dict(int(fixture['seed']),
                                  convert_resnet18.torch_layout())


@pytest.fixture(scope='module')
def variables(seeded):
  return convert_resnet18.convert_state_dict(seeded)


def test_layout_is_torchvisions(fixture):
  layout = convert_resnet18.torch_layout()
  assert list(layout) == list(fixture['layout_keys'])
  assert [','.join(map(str, s)) for s in layout.values()] == list(
      fixture['layout_shapes'])
  assert len(layout) == 102  # 122 keys minus 20 num_batches_tracked


def test_converted_tree_matches_module(variables):
  want = jax.eval_shape(lambda: resnet18.ResNet18().init(
      KEY, jnp.zeros((1, 32, 32, 3)), return_logits=True))
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(
      lambda a: a.shape, want)


@pytest.mark.parametrize('impl', ['xla', 'fast', 'mm', 'dnnl', 'winograd'])
def test_parity_with_torchvision(fixture, variables, impl):
  """Every conv_impl computes torchvision's resnet18 with its weights."""
  print('\nfixture made with', ', '.join(fixture['versions']))
  feats, logits = jax.jit(
      lambda v, x: resnet18.ResNet18(conv_impl=impl).apply(
          v, x, return_logits=True))(variables, fixture['input'])
  err_f = float(np.abs(feats - fixture['layer4']).max())
  err_l = float(np.abs(logits - fixture['logits']).max())
  print(f'{impl}: max-abs error vs torchvision: layer4 {err_f:.2e}, '
        f'logits {err_l:.2e}')
  assert feats.shape == (2, 4, 4, 512)
  assert err_f <= 1e-4 and err_l <= 1e-4


def _bfloat16_branch(fixture, variables, impl):
  """Checks the branch's features in bfloat16 with `impl` against
  torchvision's (float32 out, to bfloat16 precision); returns the compiled
  program's text."""
  fn = jax.jit(lambda v, x: resnet18.ResNet18(
      dtype=jnp.bfloat16, conv_impl=impl).apply(v, x))
  feats = fn(variables, fixture['input'])
  want = fixture['layer4']
  assert feats.dtype == jnp.float32
  assert np.linalg.norm(feats - want) / np.linalg.norm(want) < 3e-2
  return fn.lower(variables, fixture['input']).compile().as_text()


def test_mm_branch_in_bfloat16_is_bfloat16_matmuls(fixture, variables):
  """conv_impl='mm' in bfloat16: no convolution is left in the branch's
  compiled program (XLA CPU would compute it in float32); every conv is a
  bfloat16 x bfloat16 -> float32 matmul in a YNNPACK fusion, and the
  features are torchvision's to bfloat16 precision."""
  dots, ynn, convolutions = helpers.compiled_matmuls(
      _bfloat16_branch(fixture, variables, 'mm'))
  assert convolutions == 0
  assert dots == [('f32', 'bf16', 'bf16')] * 20  # conv1, 16 block convs, 3 1x1
  assert ynn == 20


def test_dnnl_branch_in_bfloat16_is_onednn_convolutions(fixture, variables):
  """conv_impl='dnnl' in bfloat16: every conv of the branch is one oneDNN
  custom call in bfloat16, none is left to XLA, and the features are
  torchvision's to bfloat16 precision (max pool included)."""
  hlo = _bfloat16_branch(fixture, variables, 'dnnl')
  # conv1, 16 block convs, 3 1x1
  assert helpers.dnnl_calls(hlo) == [('bf16', 'fwd')] * 20
  assert helpers.compiled_matmuls(hlo)[2] == 0  # no convolution left


@pytest.mark.parametrize('input_size,fusion_size', golden.FUSION_CASES)
def test_fusion_features_match_the_peer_path(fixture, variables, input_size,
                                             fusion_size):
  """Resize, normalisation, ResNet and adaptive pooling as in PyTorch."""
  fn = jax.jit(lambda v, g: resnet18.fusion_features(
      resnet18.ResNet18(), v, g, input_size=input_size,
      fusion_size=fusion_size))
  got = fn(variables, fixture['gray'])
  want = fixture[f'fusion_s{input_size}_o{fusion_size}']
  assert got.shape == want.shape == (2, fusion_size, fusion_size, 512)
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_adaptive_avg_pool_bins():
  x = jnp.arange(7 * 7, dtype=jnp.float32).reshape(1, 7, 7, 1)
  got = resnet18.adaptive_avg_pool(x, 2)[0, ..., 0]
  xs = np.asarray(x)[0, ..., 0]
  want = [[xs[r][:, c].mean() for c in (slice(0, 4), slice(3, 7))]
          for r in (slice(0, 4), slice(3, 7))]
  np.testing.assert_allclose(got, want)
  assert resnet18.adaptive_avg_pool(x, 7).shape == (1, 7, 7, 1)
  assert resnet18.output_size(224) == 7 and resnet18.output_size(32) == 1


def test_converter_names_every_bad_key(seeded):
  bad = dict(seeded)
  del bad['layer3.1.bn2.running_var']
  bad['head.fc.weight'] = np.zeros((3, 3), np.float32)
  bad['layer2.0.downsample.0.weight'] = np.zeros((128, 64, 3, 3), np.float32)
  with pytest.raises(ValueError) as e:
    convert_resnet18.convert_state_dict(bad)
  msg = str(e.value)
  assert 'missing key: layer3.1.bn2.running_var' in msg
  assert 'unexpected key: head.fc.weight' in msg
  assert ('wrong shape: layer2.0.downsample.0.weight: expected '
          '(128, 64, 1, 1), got (128, 64, 3, 3)') in msg


def test_converter_accepts_torch_extras(seeded, variables):
  """num_batches_tracked is dropped; a DataParallel 'module.' prefix is ok."""
  state = {f'module.{k}': v for k, v in seeded.items()}
  state['module.bn1.num_batches_tracked'] = np.array(0)
  got = convert_resnet18.convert_state_dict(state)
  jax.tree.map(np.testing.assert_array_equal, got, variables)


def test_cli_converts_safetensors(tmp_path, seeded, variables, capsys):
  src, out = tmp_path / 'model.safetensors', tmp_path / 'resnet18.msgpack'
  save_file(seeded, str(src))
  assert convert_resnet18.main(['--src', str(src), '--out', str(out)]) == 0
  assert '11,689,512 parameters' in capsys.readouterr().out
  loaded = resnet18.load_variables(str(out))
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  # Errors are one clear line, not a traceback.
  assert convert_resnet18.main(['--src', str(tmp_path / 'nope.pth'),
                                '--out', str(out)]) == 1
  assert 'no such weight file' in capsys.readouterr().err
  truncated = dict(seeded)
  del truncated['fc.bias']
  save_file(truncated, str(src))
  assert convert_resnet18.main(['--src', str(src), '--out', str(out)]) == 1
  assert 'missing key: fc.bias' in capsys.readouterr().err


def test_load_variables_rejects_other_files(tmp_path):
  junk = tmp_path / 'junk.msgpack'
  junk.write_bytes(b'\xc1not msgpack')
  with pytest.raises(ValueError, match='convert_resnet18'):
    resnet18.load_variables(str(junk))
  import flax  # pylint: disable=g-import-not-at-top
  junk.write_bytes(flax.serialization.msgpack_serialize({'a': np.zeros(2)}))
  with pytest.raises(ValueError, match='format marker'):
    resnet18.load_variables(str(junk))


def test_init_resnet_variables_policies(tmp_path, variables, caplog):
  mc = tiny.get_config().model
  mc.resnet18_weights = str(tmp_path / 'missing.msgpack')
  with pytest.raises(FileNotFoundError, match='convert_resnet18 --src'):
    models.init_resnet_variables(mc, KEY)

  mc.resnet18_weights = ''
  mc.require_resnet18_weights = True
  with pytest.raises(ValueError) as e:
    models.init_resnet_variables(mc, KEY)
  assert 'resnet18-f37072fd.pth' in str(e.value)
  assert 'require_resnet18_weights=False' in str(e.value)

  mc.require_resnet18_weights = False
  absl_logging.get_absl_logger().propagate = True
  with caplog.at_level(logging.WARNING):
    random = models.init_resnet_variables(mc, KEY)
  warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and 'randomly initialised' in warnings[0].message
  assert jax.tree.map(lambda a: a.shape, random) == jax.tree.map(
      lambda a: a.shape, variables)

  path = tmp_path / 'resnet18.msgpack'
  resnet18.save_variables(str(path), variables)
  mc.resnet18_weights = str(path)
  loaded = models.init_resnet_variables(mc, KEY)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_frozen_branch_gets_no_update(variables):
  """As the trainer does: stop_gradient on ResNet variables, one Adam step."""
  mc = models.resolve_sizes(tiny.get_config().model, 64)
  m = models.build_models(mc)
  gray = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 1)),
                     jnp.float32)
  x = jnp.concatenate([gray, -jnp.ones_like(gray)], axis=-1)
  feats0 = jnp.zeros((1, 2, 2, 512))
  g_params = jax.jit(m.generator.init)(KEY, x[:1], feats0)['params']
  params = {'generator': g_params, 'resnet': variables['params']}
  tx = optax.adam(1e-3)

  def loss_fn(p):
    resnet_vars = jax.lax.stop_gradient(
        {'params': p['resnet'], 'batch_stats': variables['batch_stats']})
    feats = resnet18.fusion_features(m.resnet, resnet_vars, gray,
                                     input_size=mc.resnet_input_size,
                                     fusion_size=mc.fusion_size)
    out = m.generator.apply({'params': p['generator']}, x, feats)
    return jnp.mean(jnp.abs(out[..., :3] - 0.3))

  @jax.jit
  def step(p):
    grads = jax.grad(loss_fn)(p)
    updates, _ = tx.update(grads, tx.init(p), p)
    return grads, optax.apply_updates(p, updates)

  grads, new = step(params)
  assert all(not np.any(g) for g in jax.tree.leaves(grads['resnet']))
  assert any(np.any(g) for g in jax.tree.leaves(grads['generator']))
  jax.tree.map(np.testing.assert_array_equal, new['resnet'], params['resnet'])
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                         new['generator'], params['generator'])
  assert all(jax.tree.leaves(changed))


def test_resnet_forward_flops():
  model = resnet18.ResNet18()
  x = jnp.zeros((1, 224, 224, 3))
  params = jax.eval_shape(model.init, KEY, x)
  analytic = []

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, conv_impl.Conv):
      m = context.module
      analytic.append(2 * m.kernel_size ** 2 * args[0].shape[-1] *
                      m.features * int(np.prod(out.shape[:-1])))
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(model.apply, params, x)
  cost = jax.jit(model.apply).lower(params, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  xla, analytic = cost['flops'] / 1e9, sum(analytic) / 1e9
  print(f'\nResNet-18 layer4 GFLOP/image at 224 px: analytic {analytic:.3f} '
        f'XLA {xla:.3f} (peer {PEER_RESNET_GFLOP})')
  assert analytic == pytest.approx(PEER_RESNET_GFLOP, abs=1e-3)
  assert 0.9 * analytic < xla < analytic


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('hw', [(8, 8), (7, 9)])
def test_stem_max_pool_equals_flax_max_pool(dtype, hw):
  """The 3x3/2 max pool (bfloat16: 9 strided slices of a pad made on the
  bits) gives flax's max_pool values exactly, negatives and edges too."""
  x = jax.random.normal(jax.random.key(0), (2, *hw, 3)).astype(dtype)
  want = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  got = jax.jit(resnet18.max_pool_3x3_s2)(x)
  assert got.dtype == dtype and got.shape == want.shape
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                np.asarray(want, np.float32))
