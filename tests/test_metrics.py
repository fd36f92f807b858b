"""Image quality metrics: colourfulness by hand, PSNR/SSIM against numpy."""

import numpy as np
import pytest

from jaxcolor import metrics


def test_colourfulness_of_gray_is_zero():
  gray = np.random.default_rng(0).integers(0, 256, (20, 30, 1), np.uint8)
  assert metrics.colourfulness(np.repeat(gray, 3, axis=-1)) == 0.0


def test_colourfulness_matches_a_hand_computation():
  # Left half pure red (255, 0, 0), right half pure blue (0, 0, 255):
  # rg = R - G is 255 | 0: mean 127.5, std 127.5;
  # yb = (R + G) / 2 - B is 127.5 | -255: mean -63.75, std 191.25.
  image = np.zeros((4, 8, 3), np.uint8)
  image[:, :4, 0] = 255
  image[:, 4:, 2] = 255
  expected = (np.sqrt(127.5**2 + 191.25**2)
              + 0.3 * np.sqrt(127.5**2 + 63.75**2))
  assert metrics.colourfulness(image) == pytest.approx(expected, rel=1e-12)
  assert expected == pytest.approx(272.62, abs=0.01)
  # The same image as float in [0, 1], and as a batch of two.
  assert metrics.colourfulness(image / 255.0) == pytest.approx(expected)
  batch = metrics.colourfulness(np.stack([image, image * 0]))
  np.testing.assert_allclose(batch, [expected, 0.0])


def test_psnr_of_a_gray_copy_equals_numpy():
  rng = np.random.default_rng(1)
  truth = rng.integers(0, 256, (40, 50, 3), np.uint8)
  gray = np.repeat(truth.mean(axis=-1, keepdims=True).astype(np.uint8), 3, -1)
  mse = np.mean((truth / 255.0 - gray / 255.0) ** 2)
  assert metrics.psnr(truth, gray) == pytest.approx(10 * np.log10(1 / mse),
                                                    abs=1e-4)
  psnr, ssim = metrics.psnr_ssim(truth, np.stack([truth, gray]))
  assert psnr.shape == ssim.shape == (2,)
  assert np.isinf(psnr[0]) and psnr[1] == pytest.approx(10 * np.log10(1 / mse),
                                                        abs=1e-4)
  assert ssim[0] == pytest.approx(1.0, abs=1e-6) and 0 < ssim[1] < 1


def test_ssim_is_nan_below_the_window_and_shapes_must_match():
  small = np.zeros((10, 40, 3), np.uint8)
  assert np.isnan(metrics.ssim(small, small + 1))
  assert np.isfinite(metrics.psnr(small, small + 1))
  with pytest.raises(ValueError, match='do not match'):
    metrics.psnr_ssim(small, np.zeros((1, 10, 41, 3), np.uint8))
