"""Baseline 2 (Zhang et al.) through the trainer's steps (training runs,
resume and logs: tests/test_sizes.py at 128 and 256 px)."""

import numpy as np
import pytest

from jaxcolor import families
from jaxcolor.runtime import parallel
from jaxcolor.data import pipeline
import helpers
from helpers import tiny_cic


@pytest.fixture(scope='module')
def batches():
  return helpers.shared_batches(2)


def test_steps_on_a_fixed_batch_lower_the_loss(batches):
  # One run of 10 steps: its first step's loss and its last.
  states, metrics = helpers.steps_from_fresh(
      tiny_cic(), parallel.Parallel.create('shard_map'), [batches[0]] * 10)
  first = metrics[0]['loss']
  assert np.isfinite(first) and metrics[-1]['loss'] < first
  assert int(states[-1].step) == 10


def test_pmap_matches_shard_map_with_synced_batch_norm(batches):
  del batches
  config = tiny_cic()
  a = helpers.trajectory(config, 'pmap', 2)[0][-1]
  b = helpers.trajectory(config, 'shard_map', 2)[0][-1]
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
