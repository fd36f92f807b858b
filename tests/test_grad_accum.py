"""Gradient accumulation: k micro-batches make one optimiser update."""

import jax
import numpy as np
import pytest

from jaxcolor import trainer
from jaxcolor.runtime import config_check
from jaxcolor.runtime import parallel
import helpers
from helpers import host
from helpers import max_abs_diff
from helpers import tiny_config


@pytest.fixture(scope='module')
def batches():
  return helpers.shared_batches(2)


def run(config, batches, kind='shard_map'):
  """Host state and metrics after one compiled call per batch."""
  states, metrics = helpers.steps_from_fresh(
      config, parallel.Parallel.create(kind), batches)
  return states[-1], metrics


# The GAN's steps run under pmap, as the training run's (config.parallel's
# default) do: the accumulating step compiles once for both tests.
def test_gan_micro_batches_give_the_whole_batchs_update(batches):
  # The tiny GAN has no BatchNorm: 2 micro-batches of b per device are one
  # batch of 2b, up to float rounding (sums in another order), for both
  # optimisers; the step counts updates, not micro-batches.
  (*_, whole), m1 = helpers.trajectory(tiny_config(), 'pmap', len(batches))
  (*_, micro), m2 = helpers.trajectory(tiny_config(grad_accum_steps=2), 'pmap',
                                       len(batches))
  assert int(micro.step) == len(batches)
  assert max_abs_diff(whole.d_params, micro.d_params) < 1e-6
  assert max_abs_diff(whole.g_params, micro.g_params) < 1e-6
  for a, b in zip(m1, m2):
    for key in ('g_loss', 'd_loss', 'l1', 'gan', 'd_real', 'd_fake',
                'g_grad_norm', 'd_grad_norm'):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-7,
                                 err_msg=key)


def test_cic_accumulates_with_per_micro_batch_batchnorm(batches):
  config = helpers.tiny_cic()
  whole, m1 = run(config, batches[:1])
  micro, m2 = run(helpers.tiny_cic(grad_accum_steps=2), batches[:1])
  assert int(micro.step) == 1
  leaves = jax.tree.leaves(micro.params)
  assert all(np.all(np.isfinite(x)) for x in leaves)
  # One update of the same size from the same start; BatchNorm normalised
  # each micro-batch by its own statistics, so the two differ a little.
  np.testing.assert_allclose(m1[0]['loss'], m2[0]['loss'], rtol=0.05)
  assert 0 < max_abs_diff(whole.batch_stats, micro.batch_stats)


def test_accumulation_trains_checkpoints_and_resumes(tmp_path, batches):
  del batches
  state = helpers.train_then_resume(
      lambda **o: tiny_config(grad_accum_steps=2, **o), str(tmp_path / 'run'))
  (*_, straight), _ = helpers.trajectory(tiny_config(), 'pmap', 4)
  assert max_abs_diff(host(state).g_params, straight.g_params) < 1e-5


def test_a_batch_that_does_not_split_is_refused():
  with pytest.raises(ValueError, match='grad_accum_steps=3 micro-batches'):
    trainer.check_devices(tiny_config(grad_accum_steps=3))
  with pytest.raises(ValueError, match='grad_accum_steps'):
    config_check.check(tiny_config(grad_accum_steps=0))
