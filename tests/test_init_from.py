"""Fine-tuning (config.init_from): from a bundle, a workdir or a checkpoint
folder; refusals before any work; resumed runs ignore it.

One tiny GAN source (EMA on, trained 2 steps) and its export bundle are
made per module; every fine-tuning run trains 2 steps at most.
"""

import logging
import os
import shutil

from absl import logging as absl_logging
import jax
import numpy as np
import pytest

from jaxcolor import families
from jaxcolor import inference
from jaxcolor import trainer
from jaxcolor.data import pipeline
from jaxcolor.modes import report
from jaxcolor.modes import train
from jaxcolor.runtime import parallel
import helpers

# The source and every fine-tuning run share this config but for
# init_from, so each program compiles once (JAX's persistent cache serves
# main.py's process too). No ResNet branch: it would double the time.
EMA = {'optim.ema_decay': 0.9, 'model.use_resnet': False}


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """(workdir, bundle) of a tiny GAN with an EMA, trained 2 steps."""
  root = tmp_path_factory.mktemp('source')
  workdir, bundle = str(root / 'run'), str(root / 'bundle')
  train.train_and_evaluate(helpers.tiny_config(num_train_steps=2, **EMA),
                           workdir)
  inference.write_bundle(inference.load(workdir), bundle)
  return workdir, bundle


@pytest.fixture(scope='module')
def cic_bundle(tmp_path_factory):
  workdir = helpers.untrained('cic', tmp_path_factory)
  out = str(tmp_path_factory.mktemp('cic_bundle'))
  return inference.write_bundle(inference.load(workdir), out)


@pytest.fixture(scope='module')
def finetuned(source, tmp_path_factory):
  """main.py: the source's config fine-tuned 2 steps from its bundle;
  (workdir, CompletedProcess)."""
  workdir = str(tmp_path_factory.mktemp('finetuned') / 'run')
  done = helpers.run_main('--config=configs/tiny.py', f'--workdir={workdir}',
                          f'--config.init_from={source[1]}',
                          '--config.num_train_steps=2',
                          '--config.optim.ema_decay=0.9',
                          '--config.model.use_resnet=False', timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, done


@pytest.fixture
def absl_records(caplog):
  """caplog with absl's INFO lines."""
  logger = absl_logging.get_absl_logger()
  propagate = logger.propagate
  logger.propagate = True
  with caplog.at_level(logging.INFO):
    yield caplog
  logger.propagate = propagate


def _build(config, source_path):
  """(family, par, step-0 state of `config` fine-tuned from `source_path`)."""
  family = families.build(config)
  par = parallel.Parallel.create(config.parallel)
  src = trainer.read_source(family, source_path)
  return family, par, trainer.init_state(family, par, config, source=src)


def _assert_equal_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _assert_fresh_optimisers(state, *fields):
  assert int(state.step) == 0
  for field in fields:  # the moments and counts start at 0
    for leaf in jax.tree.leaves(getattr(state, field)):
      assert not np.any(leaf), field


def test_from_a_bundle_the_first_evaluation_is_the_sources(source):
  # Evaluation during training comes after a step, so the state fine-tuning
  # builds for step 0 is checked instead, exactly (same compiled programs,
  # same inputs, so equal weights give equal bits):
  # - its inference weights and predictions are the bundle's;
  # - the loop's evaluation of it on the validation photos equals the one
  #   the source run logged at its step 2 (its EMA: the bundle's weights).
  # This run keeps an EMA, which starts as a copy of the bundle's generator.
  workdir, bundle = source
  config = helpers.tiny_config(init_from=bundle, **EMA)
  family, par, device_state = _build(config, bundle)
  state = helpers.host(device_state)
  predictor = inference.load(bundle)
  gray = helpers.train_batches(1)[0]['gray'][:predictor.batch_size]
  inputs = family.host_inputs(gray)
  ours = family.inference_params(state)
  _assert_equal_trees(ours, jax.tree.map(np.asarray, predictor.params))
  np.testing.assert_array_equal(predictor.apply_fn(ours, inputs),
                                predictor.apply_fn(predictor.params, inputs))
  _assert_equal_trees(state.ema_g_params, state.g_params)
  _assert_fresh_optimisers(state, 'g_opt_state', 'd_opt_state')
  # Bundles hold no critic: it is this config's fresh one.
  fresh = helpers.host(helpers.fresh_state(config, par)[1])
  _assert_equal_trees(state.d_params, fresh.d_params)

  eval_fn = train.compile_eval(family, par)
  scores = train.evaluate(eval_fn, par.to_step_layout(device_state), par,
                          pipeline.Data.create(config))
  logged = report.read_scalars(workdir)
  for tag in ('val/psnr', 'val/ssim'):
    np.testing.assert_array_equal(logged[tag].steps, [2])
    assert scores[tag] == logged[tag].values[0], tag


def test_main_fine_tunes_from_a_bundle(finetuned):
  workdir, done = finetuned
  assert 'Fine-tuning from' in done.stderr
  assert 'the critic starts fresh' in done.stderr
  assert 'step 2/2' in done.stderr
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  saved = helpers.saved_state(workdir, 2)
  assert int(saved['step']) == 2


@pytest.mark.parametrize('where', ['workdir', 'step folder'])
def test_from_a_checkpoint_takes_the_critic_and_ema(source, where):
  workdir = source[0]
  path = (workdir if where == 'workdir' else
          os.path.join(workdir, 'checkpoints', '2'))
  state = helpers.host(_build(helpers.tiny_config(init_from=path, **EMA),
                              path)[2])
  saved = helpers.saved_state(workdir, 2)
  assert helpers.max_abs_diff(saved['ema_g_params'], saved['g_params']) > 0
  for field in ('g_params', 'd_params', 'ema_g_params', 'resnet'):
    _assert_equal_trees(getattr(state, field), saved[field])
  _assert_fresh_optimisers(state, 'g_opt_state', 'd_opt_state')


def test_another_model_or_other_shapes_are_refused(source, cic_bundle,
                                                   tmp_path):
  workdir, bundle = source
  config = helpers.tiny_config(init_from=cic_bundle)
  run = str(tmp_path / 'run')
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(config, run)
  assert len(str(e.value).splitlines()) == 1
  assert "a 'cic' model" in str(e.value)
  assert 'config.model.name' in str(e.value)
  assert not os.path.exists(os.path.join(run, 'config.json'))
  assert not os.path.exists(os.path.join(run, 'checkpoints'))

  wide = helpers.tiny_config(**{'model.g_features': (8, 8, 16, 16, 16, 16, 32),
                                'model.d_features': (8, 8, 16, 16, 32, 1)},
                             **EMA)
  with pytest.raises(ValueError) as e:
    trainer.read_source(families.build(wide), bundle)
  lines = str(e.value).splitlines()
  assert 'do not match' in lines[0]
  assert any(line.startswith('  g_params/generator/') and 'source (' in line
             for line in lines[1:])
  assert not any('d_params' in line for line in lines)  # no critic in it
  with pytest.raises(ValueError) as e:
    trainer.read_source(families.build(wide), workdir)
  assert any(line.startswith('  d_params/') for line in
             str(e.value).splitlines())

  with_resnet = families.build(helpers.tiny_config(**{
      k: v for k, v in EMA.items() if k != 'model.use_resnet'}))
  with pytest.raises(ValueError) as e:
    trainer.read_source(with_resnet, bundle)
  assert any(line.startswith('  resnet/') and line.endswith(': missing')
             for line in str(e.value).splitlines())

  with pytest.raises(FileNotFoundError, match='config.init_from: .*does not '
                     'exist'):
    trainer.read_source(families.build(wide), str(tmp_path / 'nothing'))
  with pytest.raises(ValueError, match='config.init_from: .*is none of'):
    trainer.read_source(families.build(wide), str(tmp_path))


def test_a_resumed_run_ignores_init_from(finetuned, cic_bundle, tmp_path,
                                         absl_records):
  # The run resumes its own checkpoint; init_from (here a model it would
  # refuse) is not read.
  workdir = str(tmp_path / 'run')
  shutil.copytree(finetuned[0], workdir)
  os.remove(os.path.join(workdir, 'lock'))
  config = helpers.tiny_config(init_from=cic_bundle, num_train_steps=4, **EMA)
  state = train.train_and_evaluate(config, workdir)
  assert int(helpers.host(state).step) == 4
  assert 'config.init_from' in absl_records.text
  assert 'is ignored' in absl_records.text
  assert 'Fine-tuning from' not in absl_records.text


def test_cic_from_a_cic_checkpoint(tmp_path_factory, absl_records):
  source_dir = helpers.untrained('cic', tmp_path_factory)
  # Another seed: the fresh params differ from the source's.
  config = helpers.tiny_cic(init_from=source_dir, seed=1)
  _, par, state = _build(config, source_dir)
  state = helpers.host(state)
  saved = helpers.saved_state(source_dir, 0)
  fresh = helpers.host(helpers.fresh_state(config, par)[1])
  assert helpers.max_abs_diff(fresh.params, saved['params']) > 0
  for field in ('params', 'batch_stats'):
    _assert_equal_trees(getattr(state, field), saved[field])
  _assert_fresh_optimisers(state, 'opt_state')
  assert "Fine-tuning from" in absl_records.text
  assert 'params, batch_stats' in absl_records.text
