"""CIC baseline: ab quantisation, rebalancing, decoding, network, loss."""

import glob
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcolor.color import cielab
from jaxcolor import losses
from jaxcolor.color import ab_bins as qz
from jaxcolor.models import cic

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'jaxcolor',
                       'data', 'samples')
TINY = (8, 16, 16, 32, 16)
# XLA's RngBitGenerator keys compile far faster on CPU than threefry ones.
KEY = jax.random.key(0, impl='rbg')


@pytest.fixture(scope='module')
def bins():
  return qz.load_bins()


@pytest.fixture(scope='module')
def prior():
  return qz.load_prior()


@pytest.fixture(scope='module')
def batch():
  """Four sample photos, area-resized to 64x64, uint8 RGB (4, 64, 64, 3)."""
  paths = sorted(glob.glob(os.path.join(SAMPLES, '*.jpg')))[::14][:4]
  assert len(paths) == 4
  imgs = [cv2.resize(cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB), (64, 64),
                     interpolation=cv2.INTER_AREA) for p in paths]
  return np.stack(imgs)


@pytest.fixture(scope='module')
def tiny():
  """The tiny CICNet and its variables for a (4, 64, 64, 1) input."""
  model = cic.CICNet(widths=TINY)
  variables = jax.jit(model.init, static_argnames='train')(
      KEY, jnp.zeros((4, 64, 64, 1)), train=False)
  return model, variables


def test_tables(bins, prior):
  assert bins.shape == (313, 2) and bins.dtype == np.float32
  assert np.all(bins % 10 == 0)
  assert prior.shape == (313,) and abs(prior.sum() - 1) < 1e-9
  assert prior.min() > 0


def test_soft_encode(bins, batch):
  ab = cielab.rgb_to_lab(batch[:1].astype(np.float32) / 255)[..., 1:]
  soft = np.asarray(qz.soft_encode(ab, bins))
  assert soft.shape == ab.shape[:-1] + (313,)
  np.testing.assert_allclose(soft.sum(-1), 1, atol=1e-5)
  assert np.all((soft > 0).sum(-1) == 5)
  np.testing.assert_array_equal(soft.argmax(-1),
                                np.asarray(qz.nearest_bin(ab, bins)))
  # At a bin centre: the 4 grid neighbours (d = 10) get exp(-2) of its weight.
  centre = bins[150]
  row = np.asarray(qz.soft_encode(jnp.asarray(centre), bins))
  assert row.argmax() == 150
  others = np.sort(row[row > 0])[:-1]
  np.testing.assert_allclose(others / row[150], np.exp(-2.0), rtol=1e-5)


def test_rebalance_weights(bins, prior):
  w = qz.rebalance_weights(prior, lam=0.5, sigma=5.0, bins=bins)
  p = qz.smooth_prior(prior, bins, 5.0)
  assert w.shape == (313,) and abs(p.sum() - 1) < 1e-9
  assert abs(np.sum(p * w) - 1) < 1e-5
  # Weights fall as the (smoothed) prior rises: rare colours weigh more.
  order = np.argsort(p)
  assert np.all(np.diff(w[order]) <= 1e-6)
  assert w[np.argmin(p)] > 1 > w[np.argmax(p)]
  np.testing.assert_allclose(qz.rebalance_weights(prior, lam=1.0), 1.0,
                             rtol=1e-6)
  with pytest.raises(ValueError, match='lam'):
    qz.rebalance_weights(prior, lam=0.0)


def test_prior_from_ab(bins, batch):
  ab = np.asarray(cielab.rgb_to_lab(batch.astype(np.float32) / 255)[..., 1:])
  p = qz.prior_from_ab(ab, bins, chunk=4096)
  assert p.shape == (313,) and abs(p.sum() - 1) < 1e-12
  counts = np.bincount(np.asarray(qz.nearest_bin(ab, bins)).ravel(),
                       minlength=313)
  np.testing.assert_allclose(p, counts / counts.sum())
  np.testing.assert_allclose(qz.prior_from_ab(list(ab), bins, chunk=1000), p)
  with pytest.raises(ValueError, match=r'\(\.\.\., 2\)'):
    qz.prior_from_ab(np.zeros((4, 3)), bins)


def test_encode_targets(bins, prior, batch):
  w = qz.rebalance_weights(prior)
  soft, pw = qz.encode_targets(batch, bins, w, 16)
  assert soft.shape == (4, 16, 16, 313) and pw.shape == (4, 16, 16)
  np.testing.assert_allclose(np.asarray(soft).sum(-1), 1, atol=1e-5)
  np.testing.assert_allclose(pw, w[np.asarray(soft).argmax(-1)])
  # [-1, 1] floats give the same targets as uint8.
  soft_f, _ = qz.encode_targets(batch.astype(np.float32) / 127.5 - 1, bins, w,
                                (16, 16))
  np.testing.assert_allclose(soft_f, soft, atol=1e-4)
  with pytest.raises(ValueError, match='divide'):
    qz.encode_targets(batch, bins, w, 15)


def test_annealed_mean_of_peaked_distribution(bins):
  q = np.array([0, 57, 200, 312])
  logits = jnp.asarray(np.eye(313, dtype=np.float32)[q] * 30.0)
  ab = np.asarray(qz.annealed_mean(logits, bins, 0.38))
  np.testing.assert_allclose(ab, bins[q], atol=1e-3)
  # T = 1 on flat logits: the mean of the bin centres.
  np.testing.assert_allclose(
      np.asarray(qz.annealed_mean(jnp.zeros((313,)), bins, 1.0)),
      bins.mean(0), atol=1e-3)


def test_decode_rgb_reproduces_encoded_photo(bins, prior, batch):
  """log(soft target) decoded with L restores the photo's colours."""
  soft, _ = qz.encode_targets(batch, bins, qz.rebalance_weights(prior), 16)
  lab = cielab.rgb_to_lab(batch.astype(np.float32) / 255)
  rgb = qz.decode_rgb(jnp.log(soft + 1e-8), lab[..., :1], bins, 0.38)
  assert rgb.shape == (4, 64, 64, 3)
  assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1
  err = np.abs(np.asarray(rgb) - batch / 255.0).mean()
  gray = np.asarray(jnp.clip(cielab.lab_to_rgb(
      lab * jnp.array([1.0, 0.0, 0.0])), 0, 1))
  assert err < 0.5 * np.abs(gray - batch / 255.0).mean()


def test_cic_loss_is_weighted_cross_entropy():
  logits = jnp.array([[[[2.0, 0.0, -1.0]]], [[[0.0, 0.0, 0.0]]]])
  soft = jnp.array([[[[1.0, 0.0, 0.0]]], [[[0.5, 0.5, 0.0]]]])
  weights = jnp.array([[[2.0]], [[1.0]]])
  log_p = np.log(np.exp([2.0, 0, -1]) / np.exp([2.0, 0, -1]).sum())
  want = (2 * -log_p[0] + np.log(3.0)) / 2
  np.testing.assert_allclose(losses.cic_loss(logits, soft, weights), want,
                             rtol=1e-6)


def test_network_shapes_and_batch_stats(tiny):
  model, variables = tiny
  x = jnp.zeros((4, 64, 64, 1)) + jnp.linspace(-1, 1, 64)[:, None, None]
  assert set(variables) == {'params', 'batch_stats'}
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  out = apply(variables, x, train=False)
  assert out.shape == (4, 16, 16, 313) and out.dtype == jnp.float32
  out, upd = apply(variables, x, train=True, mutable=('batch_stats',))
  assert out.shape == (4, 16, 16, 313)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables['batch_stats'], upd['batch_stats'])
  assert all(jax.tree.leaves(changed))
  with pytest.raises(ValueError, match='multiples of 8'):
    model.init(KEY, jnp.zeros((1, 60, 60, 1)), train=False)


def test_sgd_nesterov_lowers_loss(bins, prior, batch, tiny):
  model, variables = tiny
  w = qz.rebalance_weights(prior)
  soft, pw = qz.encode_targets(batch, bins, w, 16)
  x = cielab.normalize_l(cielab.rgb_to_lab(batch.astype(np.float32) / 255)
                        [..., :1])
  tx = optax.sgd(0.01, momentum=0.9, nesterov=True)

  @jax.jit
  def step(params, stats, opt_state):
    def loss_fn(p):
      logits, upd = model.apply({'params': p, 'batch_stats': stats}, x,
                                train=True, mutable=['batch_stats'])
      return losses.cic_loss(logits, soft, pw), upd['batch_stats']
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  first = None
  for _ in range(20):
    params, stats, opt_state, loss = step(params, stats, opt_state)
    first = float(loss) if first is None else first
  assert np.isfinite(float(loss))
  assert float(loss) < 0.8 * first
