"""Baseline 1 (SCGAN-style U-Net GAN): shapes, losses, steps (training runs
and resume: tests/test_sizes.py at 128 and 256 px)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scgan_baseline
from jaxcolor import models as models_lib
from jaxcolor.runtime import parallel
import helpers


@pytest.fixture(scope='module')
def batches():
  return helpers.shared_batches(2)


def test_paper_shapes_gray_in_rgb_out_30x30_critic():
  config = scgan_baseline.get_config()
  models = models_lib.build_models(config.model)
  assert models.resnet is None
  key = jax.random.key(0, impl='rbg')
  x = jax.ShapeDtypeStruct((2, 64, 64, 1), jnp.float32)
  g_vars = jax.eval_shape(models.generator.init, key, x)
  out = jax.eval_shape(models.generator.apply, g_vars, x)
  assert out.shape == (2, 64, 64, 3)
  d_in = jax.ShapeDtypeStruct((2, 64, 64, 4), jnp.float32)
  d_vars = jax.eval_shape(models.critic.init, key, d_in)
  assert jax.eval_shape(models.critic.apply, d_vars, d_in).shape == (
      2, 30, 30, 1)


def test_steps_on_a_fixed_batch_lower_the_loss(batches):
  # Under pmap: the step the training run below compiles (no BatchNorm, so
  # the layout does not change the maths; tests/test_train.py pins pmap
  # against shard_map). One run of 8 steps: its first and last metrics.
  config = helpers.tiny_scgan()
  _, metrics = helpers.steps_from_fresh(
      config, parallel.Parallel.create('pmap'), [batches[0]] * 8)
  losses = [metrics[0], metrics[-1]]
  assert losses[1]['l1'] < losses[0]['l1']
  assert losses[1]['g_loss'] < losses[0]['g_loss']
  assert losses[0]['saliency'] == 0.0
  np.testing.assert_allclose(losses[0]['g_loss'],
                             losses[0]['l1'] + 0.05 * losses[0]['gan'],
                             rtol=1e-5)


def test_gradient_penalty_adds_to_the_critic_loss(batches):
  config = helpers.tiny_scgan(**{'loss.gradient_penalty_weight': 10.0})
  _, m = helpers.run_steps(config, parallel.Parallel.create('pmap'),
                              batches[:1])
  assert np.isfinite(m['d_loss'])
  assert m['d_loss'] > m['d_fake'] - m['d_real'] + 1e-6
