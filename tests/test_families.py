"""Model families: the registry, old configs, and a new family end to end.

A toy family (tests/toy_family.py: one file, named by import path) trains,
checkpoints, exports, colorizes, evaluates and reports through main.py with
no edit to jaxcolor.
"""

import json
import os

import cv2
import numpy as np
import pytest

from configs import cic_baseline
from configs import default
from configs import scgan_baseline
from jaxcolor import families
import helpers
import imagefactory

TOY_ENV = {'PYTHONPATH': os.pathsep.join(
    [os.path.join(helpers.ROOT, 'tests'), helpers.ROOT])}


def test_the_registry_builds_each_model_by_name():
  for config, cls in ((default.get_config(), 'GANFamily'),
                      (scgan_baseline.get_config(), 'GANFamily'),
                      (cic_baseline.get_config(), 'CICFamily')):
    assert type(families.build(config)).__name__ == cls
  with pytest.raises(ValueError, match="name='nope'; expected one of cic, "
                     'edge_saliency_gan, scgan'):
    families.family_class('nope')
  with pytest.raises(ValueError, match='cannot import the model family'):
    families.family_class('no_such_module:Family')
  with pytest.raises(ValueError, match='is not a jaxcolor.families.Family'):
    families.family_class('json:JSONDecoder')


def test_each_config_carries_only_its_own_family_keys():
  gan, cic = default.get_config(), cic_baseline.get_config()
  assert not any(k.startswith('cic') for k in gan.model)
  assert set(cic.model) == {'name', 'widths', 'num_convs', 'temperature'}
  assert set(cic.loss) == {'soft_encoding_k', 'soft_encoding_sigma',
                           'rebalance_lambda', 'prior'}
  assert set(cic.optim) == {'learning_rate', 'momentum'}
  shared = set(gan) & set(cic)
  assert shared == set(gan) and 'reuse_generator_forward' not in cic
  assert 'use_feature_cache' in gan.data and 'use_feature_cache' not in gan.model


def _old_gan_dict():
  """A GAN config as jaxcolor saved it before the families redesign."""
  d = default.get_config().to_dict()
  d['reuse_generator_forward'] = d['model'].pop('reuse_generator_forward')
  d['model']['use_feature_cache'] = d['data'].pop('use_feature_cache')
  d['model']['feature_cache_dtype'] = d['data'].pop('feature_cache_dtype')
  return json.loads(json.dumps(d))


def _old_cic_dict():
  """The old CIC config: the GAN's keys plus cic_-prefixed ones."""
  d = _old_gan_dict()
  d['model'].update(name='cic', use_resnet=False, cic_widths=[8, 16],
                    cic_num_convs=[2, 2], cic_temperature=0.38)
  d['loss'].update(cic_k=5, cic_sigma=5.0, cic_lambda=0.5, cic_prior='train')
  d['optim'].update(cic_learning_rate=0.01, cic_momentum=0.9)
  return d


def test_old_saved_configs_are_translated_on_load():
  gan = families.config_from_saved(_old_gan_dict())
  want = default.get_config()
  assert gan.to_dict() == want.to_dict()
  cic = families.config_from_saved(_old_cic_dict())
  assert cic.model.to_dict() == {'name': 'cic', 'widths': (8, 16),
                                 'num_convs': (2, 2), 'temperature': 0.38}
  assert cic.loss.prior == 'train' and cic.loss.soft_encoding_k == 5
  assert cic.optim.to_dict() == {'learning_rate': 0.01, 'momentum': 0.9}
  assert 'reuse_generator_forward' not in cic
  # Today's configs pass through unchanged, and so do unknown models.
  for config in (default.get_config(), cic_baseline.get_config()):
    d = json.loads(json.dumps(config.to_dict()))
    assert families.config_from_saved(d).to_dict() == config.to_dict()
  assert families.upgrade_config({'model': {'name': 'x'}}) == {
      'model': {'name': 'x'}, 'data': {}}


def test_a_resume_reads_no_weights_file_and_makes_no_data_pass():
  # Shapes only: a missing weights file and a 'train' prior without data
  # are no obstacle to the abstract state a resume restores into.
  gan = helpers.tiny_config(**{'model.resnet18_weights': '/no/such/file'})
  cic = helpers.tiny_cic(**{'loss.prior': 'train'})
  for config in (gan, cic):
    abstract = families.build(config).abstract_state()
    assert int(np.prod(abstract.step.shape)) == 1
  with pytest.raises(FileNotFoundError, match='/no/such/file'):
    families.build(gan).init_inputs(families.init_key(0))


def test_a_new_family_runs_every_mode_through_main(tmp_path):
  run, bundle = str(tmp_path / 'run'), str(tmp_path / 'bundle')
  photos = str(tmp_path / 'photos')
  imagefactory.copy_samples(photos, 3)

  def main(*args):
    result = helpers.run_main(*args, env=TOY_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  main('--config=tests/toy_family.py', f'--workdir={run}')
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == ['2', '4']
  with open(os.path.join(run, 'config.json')) as f:
    assert json.load(f)['model']['name'] == 'toy_family:ToyTint'
  # A family by import path runs only where the command names it.
  refused = helpers.run_main('--mode=export', f'--workdir={run}',
                             f'--output={bundle}', env=TOY_ENV)
  assert refused.returncode == 1 and not os.path.exists(bundle)
  assert ("names the model family 'toy_family:ToyTint' by import path" in
          refused.stderr and 'Traceback' not in refused.stderr)
  allow = '--allow_family=toy_family:ToyTint'
  main('--mode=export', f'--workdir={run}', f'--output={bundle}', allow)
  with open(os.path.join(bundle, 'bundle.json')) as f:
    meta = json.load(f)
  assert meta['model'] == 'toy_family:ToyTint' and meta['step'] == 4
  out = str(tmp_path / 'colour')
  main('--mode=colorize', f'--workdir={bundle}', f'--input={photos}',
       f'--output={out}', allow)
  for name in os.listdir(photos):
    src = cv2.imread(os.path.join(photos, name))
    dst = cv2.imread(os.path.join(out, os.path.splitext(name)[0] + '.png'))
    assert dst.shape == src.shape
  # The learned tint is a colour, not the gray copy.
  assert np.abs(dst[..., 0].astype(int) - dst[..., 2]).mean() > 0.5
  main('--mode=evaluate', f'--workdir={run}', f'--input={photos}', allow)
  with open(os.path.join(run, 'evaluation', 'photos',
                         'evaluation.json')) as f:
    result = json.load(f)
  assert result['model'] == 'toy_family:ToyTint' and result['num_images'] == 3
  printed = main('--mode=report', f'--workdir={run}', allow).stdout.split()
  assert [os.path.basename(p) for p in printed] == ['losses.png',
                                                    'validation.png']
