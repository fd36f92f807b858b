"""Every family at 64, 128 and 256 px: the keys that follow the size.

config.model.g_stride1_layer=-1 and fusion_size=0 are derived from
config.data.image_size (the paper's 64 px gives its own 1 and 2); a size
the networks cannot take is one line naming the keys, before any work;
the size variants of the config files (`--config=configs/x.py:256`) train.
"""

import logging
import os
import shutil

from absl import logging as absl_logging
import cv2
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
from jaxcolor import inference
from jaxcolor import models
from jaxcolor import records as records_lib
from jaxcolor import trainer
from jaxcolor.color import recombine
from jaxcolor.models import cic
from jaxcolor.modes import benchmark
from jaxcolor.modes import export
from jaxcolor.modes import train
from jaxcolor.runtime import parallel
import helpers

KEY = jax.random.key(0, impl='rbg')
BATCH = 4  # one example on each of the 4 test devices


def _variant(name, size):
  """A shipped config's size variant, narrow, on the tiny data: one network
  for both sizes (the 256-px variant's, SCGAN's 128-px one: its 256-px U-Net
  cannot take 128 px)."""
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
def test_the_derived_keys_and_shapes_at_each_size(name, size):
  """Traced (shapes, no compile): `test_the_whole_product_at_size` runs the
  same networks' steps for real."""
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
  abstract = trainer.abstract_state(family, par)
  state, metrics = jax.eval_shape(par.compile(family.train_step), abstract,
                                  par.put_batch(batch))
  assert jax.tree.map(lambda a: a.shape, state) == jax.tree.map(
      lambda a: a.shape, abstract)
  assert all(m.shape == () for m in metrics.values())
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


# ------------------------------------------------------------------ product
def _product_config(name, size, records, parallel_kind, **overrides):
  """`_variant` trained from prepared records (the proposed model with its
  feature cache), 2 steps of batch 4, a checkpoint after each; prepared in
  this process (test_records runs the pool of processes)."""
  config = _variant(name, size)
  return helpers.override(config, **{
      'data.prepared_dir': records, 'data.prepare_processes': 1,
      'parallel': parallel_kind,
      'data.use_feature_cache': name == 'gan', 'num_train_steps': 2,
      'checkpoint_every_steps': 1, 'keep_checkpoints': 3,
      'log_every_steps': 1, 'eval_every_steps': 2, 'image_every_steps': 2,
      **overrides})


def _resume_from_step_1(workdir, copy, config):
  """`workdir` copied with its checkpoint of step 2 removed, resumed to 2
  by `config`; returns the copy's new checkpoint of step 2."""
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, 'checkpoints', '2'))
  train.train_and_evaluate(config, copy)
  return helpers.saved_state(copy, 2)


@pytest.mark.parametrize('name', ['gan', 'scgan', 'cic'])
@pytest.mark.parametrize('size', [128, 256])
def test_the_whole_product_at_size(name, size, tmp_path):
  """prepare -> train from records (pmap) with evaluation and sample grids
  -> exact resume under pmap, the same step under jit(shard_map) -> export
  -> colorize a photo of an odd size, at the model's own size."""
  records = str(tmp_path / 'records')
  meta = records_lib.prepare(_product_config(name, size, records, 'pmap'))
  assert meta['image_size'] == size

  run = str(tmp_path / 'run')
  train.train_and_evaluate(_product_config(name, size, records, 'pmap'), run)
  grid = cv2.imread(os.path.join(run, 'samples', 'step_0000002.png'))
  assert grid.shape[0] % (size + 4) == 0 and grid.shape[1] % (size + 4) == 0
  straight = helpers.saved_state(run, 2)
  if name == 'scgan':  # no ResNet branch, none in its checkpoints
    assert not straight.get('resnet')
  if name == 'cic':  # its own curves, evaluation and samples
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
    acc = event_accumulator.EventAccumulator(
        run, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    for tag in ('train/loss', 'train/grad_norm', 'val/psnr', 'val/ssim',
                'val/psnr_gray', 'samples'):
      assert tag in acc.Tags()['tensors'], tag

  quiet = {'eval_every_steps': 100, 'image_every_steps': 100}
  resumed = _resume_from_step_1(
      run, str(tmp_path / 'pmap'),
      _product_config(name, size, records, 'pmap', **quiet))
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  sharded = _resume_from_step_1(
      run, str(tmp_path / 'shard_map'),
      _product_config(name, size, records, 'shard_map', **quiet))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5),
               sharded, straight)

  bundle = export.export(run, str(tmp_path / 'bundle'))
  predictor = inference.load(bundle, batch_size=1)
  assert predictor.image_size == size and predictor.step == 2
  image = helpers.photo(size // 2 + 37, size + 91)  # neither side the model's
  out, = inference.colorize_photos(predictor, [image])
  assert out.shape == image.shape
  helpers.assert_same_luminance(out, recombine.to_gray(image))
