"""Runs written by older code (tests/fixtures/legacy, made at commit 314c1d9
by tests/fixtures/make_legacy_fixtures.py) still colorize and resume as
they did: the same RGB from the workdir and its export bundle, and the same
state after resuming the workdir from step 2 to step 4.

The same means bit for bit on a CPU like the one that made the fixtures.
XLA's CPU kernels follow the instruction set (an AVX-512 Xeon sums in
another order than a Zen 3), so elsewhere the last bits differ, and a GAN's
steps amplify them: on such a Xeon the colorized RGB differed by 1.4e-6
(relative), the resumed parameters by up to 2e-5 and an Adam moment of a
critic bias by 3e-4 of its leaf's largest value. The comparison allows
1e-5 on the RGB and 1e-3 of each state leaf's largest value; a change of
the computation moves the state by far more (scaling the proposed model's
GAN term by 0.98 moves 42 of its 120 float leaves by more than that, up
to 1.2e-2). Exact resume on one machine is pinned by
tests/test_train_process.py.

JAXCOLOR_LEGACY_FIXTURES=DIR points the test at other fixtures.
"""

import os
import shutil

import jax
import numpy as np
import pytest

from jaxcolor import inference
from jaxcolor.color import ycrcb
from jaxcolor.modes import train

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.environ.get('JAXCOLOR_LEGACY_FIXTURES',
                          os.path.join(HERE, 'fixtures', 'legacy'))
SAMPLES = os.path.join(os.path.dirname(HERE), 'jaxcolor', 'data', 'samples')
MODELS = ('edge_saliency_gan', 'scgan', 'cic')
# Float rounding across CPUs (see above), relative to each array's largest
# magnitude. Integer arrays stay exact.
RGB_TOLERANCE, STATE_TOLERANCE = 1e-5, 1e-3


def assert_as_before(got, want, tolerance, err_msg):
  want = np.asarray(want)
  if not np.issubdtype(want.dtype, np.floating):
    np.testing.assert_array_equal(got, want, err_msg=err_msg)
  else:
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * scale,
                               err_msg=err_msg)


def legacy_config(model: str, num_train_steps: int):
  """The config each fixture was made with, as plain overrides of today's
  configs (adapt the keys here when the config's layout changes)."""
  from configs import cic_baseline  # pylint: disable=g-import-not-at-top
  from configs import scgan_baseline  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  base, overrides = {
      # The proposed model without its ResNet-18 branch (fixture size).
      'edge_saliency_gan': (tiny, {'model.use_resnet': False}),
      'scgan': (scgan_baseline, {
          'model.g_features': (8, 8, 16, 16, 16, 16, 16),
          'model.d_features': (8, 8, 16, 16, 16, 1)}),
      'cic': (cic_baseline, {'model.widths': (8, 16, 16, 32, 16)}),
  }[model]
  if model != 'cic':  # the GAN family's keys
    overrides.update({'model.require_resnet18_weights': False,
                      'model.conv_impl': 'xla'})
  overrides.update({
      'data.train_dir': SAMPLES, 'data.val_fraction': 0.15,
      'data.batch_size': 4, 'data.eval_batch_size': 4,
      'data.num_workers': 0, 'num_train_steps': num_train_steps,
      'log_every_steps': 2, 'image_every_steps': 2, 'eval_every_steps': 2,
      'num_eval_batches': 1, 'checkpoint_every_steps': 2,
      'keep_checkpoints': 2})
  config = base.get_config()
  for key, value in overrides.items():
    *path, leaf = key.split('.')
    target = config
    for p in path:
      target = target[p]
    target[leaf] = value
  assert config.model.name == model
  return config


def flat_state(state) -> dict:
  """{'state/<keystr>': numpy} of every leaf; typed keys as key_data."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if leaf is None:
      continue
    if jax.dtypes.issubdtype(getattr(leaf, 'dtype', None),
                             jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out['state/' + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def expected(model: str) -> dict:
  path = os.path.join(FIXTURES, model, 'expected.npz')
  if not os.path.isfile(path):
    pytest.fail(f'{path} is missing; see {FIXTURES}/README.md')
  with np.load(path) as z:
    out = dict(z)
  assert str(out['model_name']) == model
  return out


@pytest.mark.parametrize('model', MODELS)
def test_workdir_and_bundle_colorize_as_before(model, tmp_path):
  want = expected(model)
  for source in ('run', 'bundle'):  # copies: loading must not touch the repo
    path = str(tmp_path / source)
    shutil.copytree(os.path.join(FIXTURES, model, source), path)
    got = inference.load(path)(want['colorize_gray'])
    # The legacy output is the model's RGB in [0, 1], clipped; the model
    # now gives its chroma. The fixtures' colours are all inside the RGB
    # cube (CIC's are brought there by its own Lab decoding, as before), so
    # their chroma is the model's.
    _, legacy_chroma = ycrcb.split(want['colorize_rgb'] * 255.0)
    assert_as_before(
        got, legacy_chroma, RGB_TOLERANCE,
        err_msg=f'{model} {source}: chroma differs from the legacy output')


@pytest.mark.parametrize('model', MODELS)
def test_workdir_resumes_as_before(model, tmp_path):
  want = {k: v for k, v in expected(model).items() if k.startswith('state/')}
  workdir = str(tmp_path / 'run')
  shutil.copytree(os.path.join(FIXTURES, model, 'run'), workdir)
  state = train.train_and_evaluate(legacy_config(model, 4), workdir)
  got = flat_state(state)
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  assert not missing and not extra, (
      f'{model}: the resumed state has other leaves than the legacy one.\n'
      f'missing ({len(missing)}):\n  ' + '\n  '.join(missing) +
      f'\nextra ({len(extra)}):\n  ' + '\n  '.join(extra))
  for key in sorted(want):
    assert_as_before(got[key], want[key], STATE_TOLERANCE,
                     err_msg=f'{model}: {key} differs after resuming')
