"""Speed-up switches give the training result of the plain step."""

import os

import jax
import numpy as np
import pytest

from jaxcolor import families
from jaxcolor.runtime import config_check
import helpers
from helpers import host
from helpers import max_abs_diff
from helpers import tiny_config


def run_calls(config, kind, n):
  """Trains the first `n` batches through `make_train_fn`; returns (host
  state, host metrics). Each config and kind is stepped once per test
  process (`helpers.trajectory`): several tests here share the plain step.
  """
  states, metrics = helpers.trajectory(config, kind, n)
  return states[-1], metrics


@pytest.mark.parametrize('kind', ['pmap', 'shard_map'])
def test_steps_per_call_equals_single_steps(kind):
  # Under pmap the single steps also run without donation: it must not
  # change results. (Under shard_map they are the donated step the other
  # tests here compile too.)
  single, m1 = run_calls(tiny_config(donate_state=kind == 'shard_map'), kind,
                         2)
  scanned, m2 = run_calls(tiny_config(steps_per_call=2), kind, 2)
  assert int(scanned.step) == 2
  assert max_abs_diff(single.g_params, scanned.g_params) < 1e-6
  assert max_abs_diff(single.d_params, scanned.d_params) < 1e-6
  assert len(m2) == 2
  for a, b in zip(m1, m2):
    np.testing.assert_allclose(a['g_loss'], b['g_loss'], rtol=1e-5)
    np.testing.assert_allclose(a['d_loss'], b['d_loss'], rtol=1e-5, atol=1e-7)


def test_recomputing_the_generator_forward_gives_the_same_step():
  reuse, m1 = run_calls(tiny_config(), 'shard_map', 2)
  again, m2 = run_calls(tiny_config(**{'model.reuse_generator_forward': False}),
                        'shard_map', 2)
  assert max_abs_diff(reuse.g_params, again.g_params) < 1e-6
  assert max_abs_diff(reuse.d_params, again.d_params) < 1e-6
  np.testing.assert_allclose(m1[-1]['g_loss'], m2[-1]['g_loss'], rtol=1e-5)


@pytest.mark.parametrize('make', ['gan', 'cic'])
def test_bfloat16_step_runs_with_finite_losses_near_float32(make):
  if make == 'gan':
    config = lambda **o: tiny_config(**o)  # noqa: E731
  else:
    config = helpers.tiny_cic
  f32, m32 = run_calls(config(), 'shard_map', 2)
  bf16, m16 = run_calls(config(dtype='bfloat16'), 'shard_map', 2)
  # Parameters and optimiser state stay float32.
  assert {x.dtype for x in jax.tree.leaves(bf16)} <= {
      np.dtype('float32'), np.dtype('int32'), np.dtype('uint32')}
  loss = 'g_loss' if make == 'gan' else 'loss'
  for a, b in zip(m32, m16):
    assert all(np.isfinite(v) for v in b.values())
    np.testing.assert_allclose(b[loss], a[loss], rtol=0.05)


def test_unknown_dtype_is_refused():
  with pytest.raises(ValueError, match='config.dtype'):
    families.build(tiny_config(dtype='float16'))


def test_schedule_must_be_multiple_of_steps_per_call():
  with pytest.raises(ValueError, match='multiple of config.steps_per_call=4'):
    config_check.check(tiny_config(steps_per_call=4))


def test_training_loop_with_steps_per_call_checkpoints_and_resumes(tmp_path):
  workdir = str(tmp_path / 'run')

  def make(**o):
    return tiny_config(steps_per_call=2, **o)
  state = helpers.train_then_resume(make, workdir)
  # Same data order and maths as 4 single steps from scratch (the
  # undonated ones above, continued: donation changes nothing, pinned there).
  single, _ = run_calls(tiny_config(donate_state=False), 'pmap', 4)
  assert max_abs_diff(host(state).g_params, single.g_params) < 1e-5
  assert os.path.isdir(os.path.join(workdir, 'samples'))
