"""The colour path: YCrCb chroma of a model laid on a photo's own gray."""

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcolor.color import recombine
from jaxcolor.color import ycrcb
from jaxcolor.data import preprocess
from helpers import assert_same_luminance
from helpers import has_colour
from helpers import photo
import imagefactory


def chroma_of(rgb_u8):
  """RGB uint8 (..., 3) -> its chroma (..., 2), as a model would emit it."""
  return ycrcb.split(rgb_u8)[1]


def test_combine_keeps_size_and_luminance_and_takes_model_chroma():
  gray = recombine.to_gray(photo(333, 517))
  model_u8 = photo(64, 64, 3)
  chroma = chroma_of(model_u8)
  # Saturated model colours on a photo with black and white areas: chroma
  # must give way rather than the luminance.
  chroma[:8] = chroma_of(np.array([255, 0, 0], np.uint8))
  gray[:40] = 255
  gray[-40:] = 3
  for g in (gray, gray.T.copy()):  # landscape and portrait
    out = recombine.combine(g, chroma)
    assert_same_luminance(out, g)
    assert has_colour(out) > 5
  # The chroma is the model's: combining its own gray returns about it.
  back = recombine.combine(recombine.to_gray(model_u8[8:]), chroma[8:])
  assert np.abs(back.astype(int) - model_u8[8:]).mean() < 1.0


def test_out_of_range_chroma_is_desaturated_at_model_size_too():
  # Chroma far outside the RGB cube on mid, dark and bright gray: the model
  # size result keeps the gray exactly (up to rounding) and the hue of the
  # chroma, where clipping RGB would change both.
  gray = np.array([[128, 20, 235]], np.uint8)[..., None]
  chroma = np.tile(np.array([[[150.0, -150.0]]], np.float32), (1, 3, 1))
  out = recombine.at_model_size(gray, chroma)
  assert_same_luminance(out, gray[..., 0])
  _, back = ycrcb.split(out)
  cos = np.sum(back * chroma, -1) / (np.linalg.norm(back, axis=-1) *
                                     np.linalg.norm(chroma, axis=-1))
  assert np.all(cos > 0.99), cos
  # Clipping the unclipped RGB instead moves the luminance off the gray.
  rgb = np.asarray(ycrcb.rgb_from_chroma(jnp.asarray(gray, jnp.float32),
                                         jnp.asarray(chroma)))
  clipped = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
  assert np.abs(recombine.to_gray(clipped).astype(int) -
                gray[..., 0]).max() > 5


def test_chroma_from_rgb_is_splits_chroma():
  rgb = photo(20, 30).astype(np.float32)
  np.testing.assert_allclose(
      np.asarray(ycrcb.chroma_from_rgb(jnp.asarray(rgb))),
      ycrcb.split(rgb)[1], atol=1e-3)
  # Linear: [-1, 1] images give the offsets / 127.5.
  unit = preprocess.normalize(photo(20, 30))
  np.testing.assert_allclose(
      np.asarray(ycrcb.chroma_from_rgb(jnp.asarray(unit))) * 127.5,
      ycrcb.split(rgb)[1], atol=1e-2)


def test_guided_upsampling_keeps_colour_inside_the_photos_edges():
  # A dark red left part and a bright blue right part, split at a column
  # that is no model-pixel boundary; the model output is the photo itself
  # at 64 px (the best a model can do), whose chroma is blurred at the edge.
  h, w, edge = 321, 481, 237
  truth = np.zeros((h, w, 3), np.uint8)
  truth[:, :edge] = (120, 40, 40)
  truth[:, edge:] = (120, 170, 250)
  gray = recombine.to_gray(truth)
  chroma = chroma_of(cv2.resize(truth, (64, 64), interpolation=cv2.INTER_AREA))
  errors = {}
  for method in recombine.UPSAMPLING:
    out = recombine.combine(gray, chroma, method)
    assert_same_luminance(out, gray)
    near = slice(edge - 12, edge + 12)
    errors[method] = np.abs(out[:, near].astype(int) -
                            truth[:, near].astype(int)).mean()
  assert errors['guided'] < 0.8 * errors['bilinear'], errors
  with pytest.raises(ValueError, match='chroma_upsampling'):
    recombine.combine(gray, chroma, 'bicubic')


def test_tint_is_constant_chroma_on_own_luminance():
  gray = recombine.to_gray(photo(101, 77))
  out = recombine.tint(gray, (140.0, 110.0))
  assert_same_luminance(out, gray)
  _, c = ycrcb.split(out)
  mid = (gray > 60) & (gray < 190)  # away from gamut limits
  np.testing.assert_allclose(np.median(c[mid], 0), (12.0, -18.0), atol=1.0)


def test_to_gray_is_trainings_gray():
  rgb = photo(50, 70)
  np.testing.assert_array_equal(
      recombine.to_gray(rgb), preprocess.compute_maps(
          rgb, preprocess.Options())['gray'][..., 0])
  g = recombine.to_gray(rgb)
  np.testing.assert_array_equal(recombine.to_gray(np.stack([g] * 3, -1)), g)
  rgba = np.concatenate([rgb, np.full((50, 70, 1), 128, np.uint8)], -1)
  decoded = preprocess.decode_image(imagefactory.png_bytes(rgba))
  assert np.abs(recombine.to_gray(rgba).astype(int) -
                recombine.to_gray(decoded)).max() <= 1


def test_model_gray_is_the_whole_picture_resized():
  gray = recombine.to_gray(photo(333, 517))
  small = recombine.model_gray(gray, 64)
  assert small.shape == (64, 64, 1) and small.dtype == np.uint8
  # Left and right halves of the photo land in the model input's halves.
  assert abs(small[:, :32].mean() - gray[:, :258].mean()) < 2
  assert abs(small[:, 32:].mean() - gray[:, 259:].mean()) < 2
