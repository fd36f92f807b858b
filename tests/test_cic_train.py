"""Baseline 2 (Zhang et al.) through the trainer: steps, resume, logs."""

import jax
import numpy as np
import pytest

from configs import cic_baseline
from jaxcolor import parallel
from jaxcolor import train
import test_train


def tiny_cic(**overrides):
  """The CIC baseline with narrow blocks and the tiny config's data/schedule."""
  config = cic_baseline.get_config()
  config.model.cic_widths = (8, 16, 16, 32, 16)
  return test_train.on_tiny_data(config, **overrides)


def family_steps(config, batches, kind='shard_map'):
  """Fresh CIC state, `len(batches)` steps; returns (state, last metrics)."""
  family = train.make_family(config)
  par = parallel.Parallel.create(kind)
  args = family.init_args(config, train.init_key(config.seed))
  abstract = jax.eval_shape(family.create_state, *args)
  state = jax.jit(family.create_state, out_shardings=jax.tree.map(
      lambda _: par.replicated, abstract))(*args)
  step_fn = par.compile(family.train_step)
  s, metrics = par.to_step_layout(state), None
  for b in batches:
    s, metrics = step_fn(s, par.put_batch(b))
  return par.from_step_layout(s), par.fetch(metrics)


@pytest.fixture(scope='module')
def batches():
  return test_train.train_batches()


def test_steps_on_a_fixed_batch_lower_the_loss(batches):
  config = tiny_cic()
  first = family_steps(config, batches[:1])[1]['loss']
  state, m = family_steps(config, [batches[0]] * 10)
  assert np.isfinite(first) and m['loss'] < first
  assert int(test_train.host(state).step) == 10


def test_pmap_matches_shard_map_with_synced_batch_norm(batches):
  config = tiny_cic()
  a, _ = family_steps(config, batches, 'pmap')
  b, _ = family_steps(config, batches, 'shard_map')
  a, b = test_train.host(a), test_train.host(b)
  assert test_train.max_abs_diff(a.params, b.params) < 1e-5
  assert test_train.max_abs_diff(a.batch_stats, b.batch_stats) < 1e-5


def test_training_set_prior_gives_other_weights():
  imagenet = train.make_family(tiny_cic()).init_args(
      tiny_cic(), train.init_key(0))[1]
  config = tiny_cic(**{'loss.cic_prior': 'train'})
  own = train.make_family(config).init_args(config, train.init_key(0))[1]
  assert own.shape == imagenet.shape == (313,)
  assert np.all(np.isfinite(own)) and not np.allclose(own, imagenet)
  with pytest.raises(ValueError, match='cic_prior'):
    bad = tiny_cic(**{'loss.cic_prior': 'nope'})
    train.make_family(bad).init_args(bad, train.init_key(0))


def test_trains_logs_checkpoints_and_resumes(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  test_train.train_then_resume(tiny_cic, workdir)
  acc = event_accumulator.EventAccumulator(
      workdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  for tag in ('train/loss', 'train/grad_norm', 'val/psnr', 'val/ssim',
              'val/psnr_gray', 'samples'):
    assert tag in acc.Tags()['tensors'], tag
