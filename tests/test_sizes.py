"""Every family at 64, 128 and 256 px: the keys that follow the size.

config.model.g_stride1_layer=-1 and fusion_size=0 are derived from
config.data.image_size (the paper's 64 px gives its own 1 and 2); a size
the networks cannot take is one line naming the keys, before any work;
the size variants of the config files (`--config=configs/x.py:256`) train.
"""

import logging

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cic_baseline
from configs import default
from configs import quickstart
from configs import recipe
from configs import scgan_baseline
from configs import tiny
from jaxcolor import families
from jaxcolor import models
from jaxcolor import trainer
from jaxcolor.models import cic
from jaxcolor.modes import benchmark
from jaxcolor.runtime import parallel
import helpers

KEY = jax.random.key(0, impl='rbg')
BATCH = 4  # one example on each of the 4 test devices


def _variant(name, size):
  """A shipped config's size variant, narrow, on the tiny data: one network
  for both sizes (the 256-px variant's, SCGAN's 128-px one: its 256-px U-Net
  cannot take 128 px), so both sizes share one fresh state."""
  if name == 'cic':
    config = cic_baseline.get_config(str(size))
    config.model.widths = (8, 16, 16, 32, 16)
  else:
    config = (scgan_baseline.get_config('128') if name == 'scgan'
              else recipe.get_config('256'))
    config = quickstart.narrower(config, 8)
  config = helpers.on_tiny_data(config, **{'data.image_size': size,
                                           'data.batch_size': BATCH})
  if name.startswith('gan'):
    # A random ResNet on 32 px: the branch's shapes and code, little work.
    config.model.use_resnet = name == 'gan'
    config.model.require_resnet18_weights = False
    config.model.resnet_input_size = 32
  return config


# name, size -> (g_stride1_layer, fusion_size, bottleneck, critic map side)
# for the GANs (8 encoder layers: d1 at stride 1 at 128 px, none at 256);
# (ab side,) for CIC.
EXPECTED = {
    ('gan', 128): (1, 4, 1, 30), ('gan', 256): (0, 4, 1, 62),
    ('gan_no_resnet', 128): (1, 4, 1, 30),
    ('gan_no_resnet', 256): (0, 4, 1, 62),
    ('scgan', 128): (1, 4, 1, 14), ('scgan', 256): (0, 4, 1, 30),
    ('cic', 128): (32,), ('cic', 256): (64,),
}
# Compiling a GAN step costs ~20 s of CPU: every family steps for real at
# 256 px (and the proposed model at 128 px too); these are traced (init and
# step under jax.eval_shape: shapes, no compile).
TRACED = {('gan_no_resnet', 128), ('gan_no_resnet', 256), ('scgan', 128),
          ('cic', 128)}
_FRESH = {}  # name -> host copy of a fresh state (the same at every size)


def _fresh_state(name, family, config, par):
  """A fresh state of `config` on `par`: initialised (compiled) once per
  network; the other size checks its traced init has the same shapes."""
  if name not in _FRESH:
    _FRESH[name] = helpers.host(helpers.fresh_state(config, par)[1])
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
  assert shapes(family.abstract_state()) == shapes(_FRESH[name])
  return jax.device_put(_FRESH[name], par.replicated)


def _bottleneck(family, config):
  """The side of the generator's innermost layer, traced (no compile)."""
  mc, s = config.model, config.data.image_size
  gen = family.models.generator
  x = jax.ShapeDtypeStruct((1, s, s, 1 + int(mc.use_edge)), jnp.float32)
  feats = None
  if mc.use_resnet:
    feats = jax.ShapeDtypeStruct((1, mc.fusion_size, mc.fusion_size, 512),
                                 jnp.float32)
  params = jax.eval_shape(gen.init, KEY, x, feats)
  _, inter = jax.eval_shape(
      lambda p, x, f: gen.apply(p, x, f, capture_intermediates=True,
                                mutable=['intermediates']), params, x, feats)
  return inter['intermediates'][f'down{len(mc.g_features)}'][
      '__call__'][0].shape[1]


@pytest.mark.parametrize('name,size', sorted(EXPECTED))
def test_one_train_step_at_each_size(name, size):
  config = _variant(name, size)
  family = families.build(config)
  if name == 'cic':
    st = family.abstract_state()
    logits = jax.eval_shape(
        lambda v: family.net.apply(v, jnp.zeros((1, size, size, 1)),
                                   train=False),
        {'params': st.params, 'batch_stats': st.batch_stats})
    assert logits.shape == (1, size // 4, size // 4, 313)
    assert (logits.shape[1],) == EXPECTED[name, size]
  else:
    mc = config.model
    got = (mc.g_stride1_layer, mc.fusion_size, _bottleneck(family, config),
           models.size_table(mc, size)['critic_map'])
    assert got == EXPECTED[name, size]
  par = parallel.Parallel.create('shard_map')
  batch = benchmark.synthetic_batch(config, np.random.default_rng(0), BATCH)
  step = par.compile(family.train_step)
  if (name, size) in TRACED:
    abstract = trainer.abstract_state(family, par)
    state, metrics = jax.eval_shape(step, abstract, par.put_batch(batch))
    assert jax.tree.map(lambda a: a.shape, state) == jax.tree.map(
        lambda a: a.shape, abstract)
    assert all(m.shape == () for m in metrics.values())
  else:
    state = par.to_step_layout(_fresh_state(name, family, config, par))
    state, metrics = step(state, par.put_batch(batch))
    metrics = par.fetch(metrics)
    assert int(helpers.host(par.from_step_layout(state)).step) == 1
    assert metrics and all(np.isfinite(v) for v in metrics.values()), metrics
  inputs = family.host_inputs(batch['gray'])
  chroma = jax.eval_shape(family.predict,
                          family.abstract_inference_params(), inputs)
  assert chroma.shape == (BATCH, size, size, 2)


@pytest.mark.parametrize('make,size,bottleneck', [
    (default.get_config, 64, 1), (default.get_config, 128, 1),
    (default.get_config, 256, 2),  # 7 layers: one short of 1x1
    (lambda: recipe.get_config('256'), 256, 1),
    (lambda: scgan_baseline.get_config('128'), 128, 1),
    (lambda: scgan_baseline.get_config('256'), 256, 1),
])
def test_the_shipped_generators_reach_their_bottleneck(
    make, size, bottleneck, monkeypatch, caplog):
  config = make()
  config.data.image_size = size
  config.model.require_resnet18_weights = False
  monkeypatch.setattr(absl_logging.get_absl_logger(), 'propagate', True)
  with caplog.at_level(logging.WARNING):
    family = families.build(config)
  assert _bottleneck(family, config) == bottleneck
  warned = [r.getMessage() for r in caplog.records if 'bottleneck' in
            r.getMessage()]
  if bottleneck == 1:
    assert not warned
  else:
    assert len(warned) == 1 and 'config.model.g_features' in warned[0]


@pytest.mark.parametrize('make', [
    default.get_config, recipe.get_config, scgan_baseline.get_config,
    tiny.get_config, quickstart.get_config])
def test_the_papers_64px_configs_derive_their_old_values(make):
  config = make()
  assert config.data.image_size == 64
  assert (config.model.g_stride1_layer, config.model.fusion_size) == (-1, 0)
  families.build(config)
  # Written into the run's config: what it saves and resumes against.
  assert (config.model.g_stride1_layer, config.model.fusion_size) == (1, 2)


def test_saved_configs_keep_their_explicit_values():
  saved = default.get_config().to_dict()
  saved['model'].update(g_stride1_layer=1, fusion_size=2)  # an old run's
  upgraded = families.upgrade_config(saved)
  assert (upgraded['model']['g_stride1_layer'],
          upgraded['model']['fusion_size']) == (1, 2)
  hand_set = default.get_config().to_dict()  # 256 px set by hand
  hand_set['data']['image_size'] = 256
  hand_set['model'].update(g_stride1_layer=0, fusion_size=4,
                           require_resnet18_weights=False)
  config = families.config_from_saved(hand_set)
  families.build(config)
  assert (config.model.g_stride1_layer, config.model.fusion_size) == (0, 4)


def _tiny_critic_at_8px(config):
  config.data.image_size = 8
  config.model.g_features = (8, 8, 8)
  config.model.use_resnet = False
  return config


@pytest.mark.parametrize('make,overrides,match', [
    (default.get_config, {'data.image_size': 96},
     r'image_size=96: .* 7 encoder layers \(config.model.g_features\) take '
     r'multiples of 64 \(64, 128, 192, 256, ...\)'),
    (default.get_config, {'model.g_stride1_layer': 0},
     r'image_size=64 is not a multiple of 128, .* sizes that work are 128, '
     r'256, .*model.g_stride1_layer=-1'),
    (default.get_config, {'data.image_size': 256, 'model.fusion_size': 2},
     r'outputs 4x4 at 256 px; set model.fusion_size=4'),
    (default.get_config, {'model.g_stride1_layer': 9},
     r'config.model.g_stride1_layer=9 must be in 0..7'),
    (lambda: _tiny_critic_at_8px(default.get_config()), {},
     r'image_size=8 is too small for the critic \(config.model.d_kernel'),
    (cic_baseline.get_config, {'data.image_size': 100},
     r'image_size=100: the CIC network .* multiples of 8'),
])
def test_a_size_the_model_cannot_take_is_one_line(make, overrides, match):
  config = helpers.override(make(), **overrides)
  with pytest.raises(ValueError, match=match) as e:
    families.build(config)
  assert '\n' not in str(e.value)


def test_config_variants_name_their_size():
  assert cic_baseline.get_config('256').data.image_size == 256
  assert scgan_baseline.get_config('256').model.d_strides == (1, 2, 2, 2, 1,
                                                              1)
  assert len(recipe.get_config('256').model.g_features) == 8
  assert recipe.get_config('128').data.image_size == 128
  # No variant, or 64: the 64-px config as it was.
  assert recipe.get_config('64').to_dict() == recipe.get_config().to_dict()
  with pytest.raises(ValueError, match=r'configs/recipe.py:128'):
    recipe.get_config('100')
  assert cic.OUTPUT_STRIDE == 4
