"""sRGB <-> Lab against OpenCV and a float64 CIE reference, on real photos.

Units: Lab differences are in Lab units (L in [0, 100]); RGB differences in
[0, 1] units.

OpenCV's float conversions are themselves approximate: COLOR_RGB2Lab on
float input interpolates a 3-D lookup table (errors up to ~0.2 in L and
~0.5 in a/b), and COLOR_LRGB2Lab evaluates the cube root with a spline
table that is coarse for X/Xn, Y/Yn or Z/Zn below ~0.02. Where OpenCV is
exact we ask for 1e-3; elsewhere we bound its table error.
"""

import glob
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcolor.color import cielab

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'jaxcolor',
                       'data', 'samples')

# IEC 61966-2-1 / CIE 1976 constants as OpenCV uses them.
_M = np.array([[0.412453, 0.357580, 0.180423],
               [0.212671, 0.715160, 0.072169],
               [0.019334, 0.119193, 0.950227]])
_WHITE = np.array([0.950456, 1.0, 1.088754])


def _photos(n=None):
  paths = sorted(glob.glob(os.path.join(SAMPLES, '*.jpg')))
  assert len(paths) >= 8, 'sample photos missing'
  paths = paths[::max(1, len(paths) // n)][:n] if n else paths
  out = []
  for p in paths:
    bgr = cv2.imread(p, cv2.IMREAD_COLOR)
    assert bgr is not None, p
    out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255)
  return out


@pytest.fixture(scope='module')
def photos():
  return _photos(12)


def _linear64(rgb):
  rgb = rgb.astype(np.float64)
  return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _lab64(rgb):
  """Textbook sRGB -> XYZ -> Lab in float64."""
  t = _linear64(rgb) @ _M.T / _WHITE
  f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
  l = np.where(t[..., 1] > 0.008856, 116 * f[..., 1] - 16, 903.3 * t[..., 1])
  return np.stack([l, 500 * (f[..., 0] - f[..., 1]),
                   200 * (f[..., 1] - f[..., 2])], axis=-1)


def test_matches_float64_reference(photos):
  for rgb in photos:
    lab = np.asarray(cielab.rgb_to_lab(rgb))
    np.testing.assert_allclose(lab, _lab64(rgb), atol=1e-3, rtol=0)


def test_matches_opencv_linear_path(photos):
  """COLOR_LRGB2Lab (no gamma table) on our linearised input."""
  exact_errs, all_errs = [], []
  for rgb in photos:
    lin = np.asarray(cielab.srgb_to_linear(rgb))
    ref = cv2.cvtColor(lin, cv2.COLOR_LRGB2Lab)
    err = np.abs(np.asarray(cielab.rgb_to_lab(rgb)) - ref).reshape(-1, 3)
    t_min = (lin.astype(np.float64) @ _M.T / _WHITE).min(axis=-1).ravel()
    exact_errs.append(err[t_min >= 0.02])  # OpenCV's cube-root spline is
    all_errs.append(err)                   # accurate here
  exact_errs, all_errs = np.concatenate(exact_errs), np.concatenate(all_errs)
  assert len(exact_errs) > 0.5 * len(all_errs)
  assert exact_errs.max() <= 1e-3
  assert all_errs.max() <= 0.05


def test_matches_opencv_srgb_within_its_lut_error(photos):
  errs = []
  for rgb in photos:
    ref = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    errs.append(np.abs(np.asarray(cielab.rgb_to_lab(rgb)) - ref).reshape(-1, 3))
  errs = np.concatenate(errs)
  assert np.all(errs.max(axis=0) <= [0.25, 0.6, 0.6])
  assert np.all(errs.mean(axis=0) <= 0.1)


def test_lab_to_rgb_matches_opencv(photos):
  for rgb in photos:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    ref = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    np.testing.assert_allclose(np.asarray(cielab.lab_to_rgb(lab)), ref,
                               atol=1e-3, rtol=0)


def test_round_trips(photos):
  for rgb in photos:
    lab = cielab.rgb_to_lab(rgb)
    back = cielab.lab_to_rgb(lab)
    np.testing.assert_allclose(np.asarray(back), rgb, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(cielab.rgb_to_lab(back)),
                               np.asarray(lab), atol=1e-3, rtol=0)


def test_ranges_and_extremes():
  rgb = jnp.array([[0., 0., 0.], [1., 1., 1.], [1., 0., 0.], [0., 0., 1.]])
  lab = np.asarray(cielab.rgb_to_lab(rgb))
  np.testing.assert_allclose(lab[0], [0, 0, 0], atol=1e-4)
  np.testing.assert_allclose(lab[1], [100, 0, 0], atol=1e-3)
  assert lab[2, 1] > 75 and lab[3, 2] < -100   # red: +a; blue: -b
  grad = jax.grad(lambda x: jnp.sum(cielab.rgb_to_lab(x)))(rgb)
  assert np.all(np.isfinite(np.asarray(grad)))
  with pytest.raises(ValueError, match=r'\(\.\.\., 3\)'):
    cielab.rgb_to_lab(jnp.zeros((4, 4, 1)))


def test_batch_helpers():
  u8 = np.array([[0, 128, 255]], np.uint8)
  np.testing.assert_allclose(np.asarray(cielab.to_unit_rgb(u8)),
                             [[0, 128 / 255, 1]], atol=1e-7)
  np.testing.assert_allclose(
      np.asarray(cielab.to_unit_rgb(np.array([-1., 0., 1.], np.float32))),
      [0, 0.5, 1])
  l = jnp.array([0., 50., 100.])
  np.testing.assert_allclose(np.asarray(cielab.normalize_l(l)), [-1, 0, 1])
  np.testing.assert_allclose(
      np.asarray(cielab.denormalize_l(cielab.normalize_l(l))), l)
