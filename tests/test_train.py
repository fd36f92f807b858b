"""The trainer: one step, data parallelism, checkpoints, logs, divergence."""

import contextlib
import glob
import os
import shutil

import jax
import numpy as np
import pytest

from jaxcolor.runtime import checkpoint
from jaxcolor.runtime import parallel
from jaxcolor.modes import train
from jaxcolor.data import pipeline
import helpers
from helpers import host
from helpers import max_abs_diff
from helpers import saved_state
from helpers import tiny_config


@pytest.fixture(scope='module')
def batches():
  return helpers.shared_batches(2)


@pytest.fixture(scope='module')
def sharded(batches):
  """([host state fresh, after step 1, after step 2], [metrics of each
  step]) of the tiny config under shard_map on the 4 devices: one run (and
  one compiled step) for every test here that steps it."""
  del batches
  return helpers.trajectory(tiny_config(), 'shard_map', 2)


def test_one_step_updates_generator_and_critic_not_resnet(sharded):
  (before, after, _), (metrics, _) = sharded
  assert int(after.step) == 1
  assert max_abs_diff(before.g_params, after.g_params) > 0
  assert max_abs_diff(before.d_params, after.d_params) > 0
  # The frozen branch: bitwise unchanged, and no optimizer state for it.
  assert max_abs_diff(before.resnet, after.resnet) == 0
  assert 'resnet' not in after.g_params
  g_opt_leaves = len(jax.tree.leaves(after.g_opt_state))
  g_leaves = len(jax.tree.leaves(after.g_params))
  assert g_opt_leaves == 2 * g_leaves + 1   # Adam: mu, nu, count
  for k in ('g_loss', 'd_loss', 'l1', 'gan', 'saliency', 'd_real', 'd_fake',
            'g_grad_norm', 'd_grad_norm', 'g_param_norm', 'd_param_norm'):
    assert np.isfinite(metrics[k]), k
  assert 0 < metrics['d_real'] < 1 and 0 < metrics['d_fake'] < 1
  np.testing.assert_allclose(metrics['d_loss'],
                             metrics['d_fake'] - metrics['d_real'], atol=1e-6)
  np.testing.assert_allclose(
      metrics['g_loss'],
      metrics['l1'] + 0.5 * metrics['gan'] + 0.05 * metrics['saliency'],
      rtol=1e-5)


def test_unfrozen_resnet_is_trained(batches):
  config = tiny_config(**{'model.freeze_resnet': False})
  (before, after), _ = helpers.steps_from_fresh(
      config, parallel.Parallel.create('shard_map'), batches[:1])
  assert 'resnet' in after.g_params
  assert max_abs_diff(before.g_params['resnet'], after.g_params['resnet']) > 0


def test_four_devices_match_one_device(sharded, batches):
  config = tiny_config()
  assert jax.device_count() == 4
  four = sharded[0][-1]
  one_par = parallel.Parallel(
      kind='shard_map',
      mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), (parallel.AXIS,)))
  # The fresh state is the one the 4-device run started from, on 1 device.
  one = helpers.steps_from_fresh(config, one_par, batches)[0][-1]
  assert max_abs_diff(four.g_params, one.g_params) < 1e-5
  assert max_abs_diff(four.d_params, one.d_params) < 1e-5


def test_pmap_matches_shard_map(sharded):
  (*_, a), ma = helpers.trajectory(tiny_config(), 'pmap', 2)
  (*_, b), mb = sharded
  assert max_abs_diff(a.g_params, b.g_params) < 1e-6
  assert max_abs_diff(a.d_params, b.d_params) < 1e-6
  for k in ma[-1]:
    np.testing.assert_allclose(ma[-1][k], mb[-1][k], rtol=1e-5, err_msg=k)


def checkpoint_after_one_step(workdir, sharded):
  """Saves the state after one step and a train iterator that read 1 batch.

  Returns (config, state, iterator).
  """
  config = tiny_config()
  state = jax.device_put(sharded[0][1],
                         parallel.Parallel.create('shard_map').replicated)
  it = iter(pipeline.build_train_dataset(config, process_index=0,
                                         process_count=1))
  next(it)
  manager = checkpoint.create_manager(workdir, config)
  checkpoint.save(manager, 1, state, it, config)
  manager.wait_until_finished()
  return config, state, it


@contextlib.contextmanager
def counting_lowerings():
  """Yields a list that gets one entry per JAX program lowered meanwhile."""
  lowered = []

  def listener(event, unused_secs, **unused_kw):
    if event == '/jax/core/compile/jaxpr_to_mlir_module_duration':
      lowered.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield lowered
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_pmap_layout_converts_a_whole_tree_in_one_program():
  # One program per direction and tree structure, not one per array shape
  # (the state has hundreds of arrays), traced once per process; each
  # device keeps its own copy.
  par = parallel.Parallel.create('pmap')
  tree = {name: jax.device_put(np.arange(np.prod(s), dtype=dt).reshape(s),
                               par.replicated)
          for name, s, dt in (('a', (5, 7), np.float32), ('b', (), np.int32),
                              ('c', (2, 3, 9), np.uint32))}
  tree['none'] = None
  with counting_lowerings() as lowered:
    step_layout = par.to_step_layout(tree)
    back = par.from_step_layout(step_layout)
    assert len(lowered) == 2
    par.from_step_layout(par.to_step_layout(tree))
    # Another run's layout in this process: the same programs.
    again = parallel.Parallel.create('pmap')
    again.from_step_layout(again.to_step_layout(tree))
    assert len(lowered) == 2
  n = jax.device_count()
  assert step_layout['none'] is None and back['none'] is None
  for name in ('a', 'b', 'c'):
    x, y = step_layout[name], back[name]
    assert x.shape == (n,) + tree[name].shape and x.dtype == tree[name].dtype
    assert x.sharding.is_equivalent_to(par.batch_sharding, x.ndim)
    for shard in x.addressable_shards:
      np.testing.assert_array_equal(shard.data[0], np.asarray(tree[name]))
    assert y.sharding.is_equivalent_to(par.replicated, y.ndim)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(tree[name]))


def test_checkpoint_round_trip(tmp_path, sharded):
  config, state, it = checkpoint_after_one_step(str(tmp_path), sharded)
  expected_next = next(it)
  it2 = iter(pipeline.build_train_dataset(config, process_index=0,
                                          process_count=1))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
  step, restored = checkpoint.restore_latest(
      checkpoint.create_manager(str(tmp_path), config), abstract, it2, config)
  assert step == 1
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert max_abs_diff(host(restored), host(state)) == 0
  got_next = next(it2)
  for k in expected_next:
    np.testing.assert_array_equal(got_next[k], expected_next[k])


def test_saving_replicated_state_compiles_nothing(tmp_path):
  # Orbax's CPU/TPU default slices each replicated array across its
  # replicas first, one compiled program per array shape and device; for
  # the real state that made every process's first save block for seconds.
  # Shapes no other test uses (no earlier save has warmed JAX's caches),
  # their first axis divisible by the 4 devices (orbax slices along it).
  config = tiny_config()
  par = parallel.Parallel.create('shard_map')
  state = {name: jax.device_put(np.arange(np.prod(s), dtype=np.float32)
                                .reshape(s), par.replicated)
           for name, s in (('a', (12, 13)), ('b', (20, 3, 11)), ('c', (36,)))}
  it = iter(pipeline.build_train_dataset(config, process_index=0,
                                         process_count=1))
  manager = checkpoint.create_manager(str(tmp_path), config)
  with counting_lowerings() as lowered:
    checkpoint.save(manager, 1, state, it, config)
    manager.wait_until_finished()
  assert not lowered
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
  _, restored = checkpoint.restore_latest(manager, abstract, it, config)
  assert max_abs_diff(host(restored), host(state)) == 0
  assert restored['a'].sharding.is_equivalent_to(par.replicated, 2)


def test_checkpoint_from_other_model_is_refused(tmp_path, sharded):
  _, state, it = checkpoint_after_one_step(str(tmp_path), sharded)
  other = tiny_config(**{'model.g_features': (8, 8, 16, 16, 16, 16, 32)})
  with pytest.raises(ValueError, match='model.g_features'):
    checkpoint.restore_latest(checkpoint.create_manager(str(tmp_path), other),
                              state, it, other)


# One run for the loop's outputs, its resume and its divergence: 2 steps
# (a checkpoint each), then the same workdir resumed to 4 and a copy of it
# resumed with a learning rate that poisons the parameters.
def test_train_writes_tensorboard_samples_and_checkpoints_and_resumes(
    tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(
      tiny_config(**{'num_train_steps': 2, 'checkpoint_every_steps': 1}),
      workdir)
  poisoned = str(tmp_path / 'poisoned')
  shutil.copytree(workdir, poisoned, ignore=shutil.ignore_patterns('lock'))

  # The checkpoint holds the ResNet: a resume builds only the state's shapes,
  # so a weights file that is gone by now is not read.
  gone = tiny_config(num_train_steps=4,
                     **{'model.resnet18_weights': str(tmp_path / 'gone')})
  state = train.train_and_evaluate(gone, workdir)
  assert int(host(state).step) == 4
  with pytest.raises(FileNotFoundError, match='gone'):
    train.train_and_evaluate(gone, str(tmp_path / 'fresh'))

  events = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert events
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={
      event_accumulator.TENSORS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  tags = set(acc.Tags()['tensors']) | set(acc.Tags()['scalars'])
  for tag in ('train/g_loss', 'train/d_loss', 'train/l1', 'train/gan',
              'train/saliency', 'train/d_real', 'train/d_fake',
              'train/g_grad_norm', 'train/d_grad_norm', 'train/g_param_norm',
              'train/images_per_sec_per_device', 'val/psnr', 'val/ssim',
              'val/psnr_gray', 'val/ssim_gray', 'steps_per_sec'):
    assert tag in tags, (tag, sorted(tags))
  assert 'samples' in set(acc.Tags()['tensors']) | set(acc.Tags()['images'])
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  pngs = sorted(os.listdir(os.path.join(workdir, 'samples')))
  assert pngs == ['step_0000002.png', 'step_0000004.png']
  assert os.path.isfile(os.path.join(workdir, 'chroma.json'))  # for colorize

  # Non-finite: stops with the step and keeps the last good checkpoint.
  bad = tiny_config(**{'optim.g_learning_rate': float('nan'),
                       'checkpoint_every_steps': 1, 'num_train_steps': 5})
  with pytest.raises(train.NonFiniteError, match='g_param_norm at step 3'):
    train.train_and_evaluate(bad, poisoned)
  ckpt_dir = os.path.join(poisoned, 'checkpoints')
  assert sorted(os.listdir(ckpt_dir)) == ['1', '2']
  leaves = jax.tree.leaves(saved_state(poisoned, 2)['g_params'])
  assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
