"""Baseline 2 (Zhang et al.) through the trainer: steps, resume, logs."""

import numpy as np
import pytest

from jaxcolor import families
from jaxcolor.runtime import parallel
from jaxcolor.data import pipeline
import helpers
from helpers import tiny_cic


def family_steps(config, batches, kind='shard_map'):
  return helpers.run_steps(config, parallel.Parallel.create(kind), batches)


@pytest.fixture(scope='module')
def batches():
  return helpers.train_batches()


def test_steps_on_a_fixed_batch_lower_the_loss(batches):
  config = tiny_cic()
  first = family_steps(config, batches[:1])[1]['loss']
  state, m = family_steps(config, [batches[0]] * 10)
  assert np.isfinite(first) and m['loss'] < first
  assert int(helpers.host(state).step) == 10


def test_pmap_matches_shard_map_with_synced_batch_norm(batches):
  config = tiny_cic()
  a, _ = family_steps(config, batches, 'pmap')
  b, _ = family_steps(config, batches, 'shard_map')
  a, b = helpers.host(a), helpers.host(b)
  assert helpers.max_abs_diff(a.params, b.params) < 1e-5
  assert helpers.max_abs_diff(a.batch_stats, b.batch_stats) < 1e-5


def test_training_set_prior_gives_other_weights():
  key = families.init_key(0)
  imagenet = families.build(tiny_cic()).init_inputs(key)[1]
  config = tiny_cic(**{'loss.prior': 'train'})
  data = pipeline.Data.create(config)
  own = families.build(config).init_inputs(key, data)[1]
  assert own.shape == imagenet.shape == (313,)
  assert np.all(np.isfinite(own)) and not np.allclose(own, imagenet)
  with pytest.raises(ValueError, match='needs the training data'):
    families.build(config).init_inputs(key, None)
  with pytest.raises(ValueError, match='prior'):
    bad = tiny_cic(**{'loss.prior': 'nope'})
    families.build(bad).init_inputs(key, data)


def test_trains_logs_checkpoints_and_resumes(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  helpers.train_then_resume(tiny_cic, workdir)
  acc = event_accumulator.EventAccumulator(
      workdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  for tag in ('train/loss', 'train/grad_norm', 'val/psnr', 'val/ssim',
              'val/psnr_gray', 'samples'):
    assert tag in acc.Tags()['tensors'], tag
