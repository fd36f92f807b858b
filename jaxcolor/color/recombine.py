"""Gray photo -> model chroma -> upsampled -> on the photo's own luminance.

The one path from a photo of any size to its colour version, shared by
colorize, evaluate and serve. The photo is made gray (colour photos with
training's formula), resized whole to the model's square input (the aspect
ratio is restored later) and colorized there; only the model's chroma is
kept. It is upsampled to the photo's size (`--chroma_upsampling`: bilinear,
or 'guided': bilinear, then a guided filter (He et al.; OpenCV contrib's
ximgproc) steered by the photo's own full-resolution gray, so colour follows
its edges) and recombined with the photo's own luminance in YCrCb
(`ycrcb.merge`): outputs are as sharp as the input, their luminance is the
input's gray up to rounding, and a colour that would leave the RGB cube is
desaturated, not clipped, at model resolution as at full size.

Chroma here is (Cr - 128, Cb - 128) in 8-bit units, float32.
"""

from typing import Callable, Sequence

import cv2
import numpy as np

from jaxcolor.color import ycrcb

# --chroma_upsampling: how the model's chroma reaches the photo's size.
UPSAMPLING = ('bilinear', 'guided')
DEFAULT_UPSAMPLING = 'bilinear'
# The guided filter's window radius in model pixels, and its regulariser
# for a guide in [0, 1] (edges whose local gray variance is above ~eps are
# kept, flatter areas smoothed); chosen on CBSD68 (docs/results.md).
GUIDED_RADIUS = 2
GUIDED_EPS = 1e-3

# gray uint8 (B, S, S, 1) -> chroma float32 (B, S, S, 2): a model, e.g. an
# `inference.Predictor`.
PredictChroma = Callable[[np.ndarray], np.ndarray]


def to_gray(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W), (H, W, 1), RGB (H, W, 3) or RGBA (H, W, 4) -> uint8 (H, W).

  Colour uses training's formula (cv2 RGB->GRAY, BT.601); alpha is
  composited over white first, as `preprocess.decode_image` does.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'expected uint8 pixels, got {image.dtype}')
  if image.ndim == 2:
    return image
  if image.ndim == 3 and image.shape[2] == 1:
    return image[..., 0]
  if image.ndim == 3 and image.shape[2] == 4:
    alpha = image[..., 3:].astype(np.float32) / 255.0
    image = np.round(image[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(
        np.uint8)
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'expected (H, W[, 1|3|4]) pixels, got {image.shape}')
  return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def model_gray(gray_full: np.ndarray, size: int) -> np.ndarray:
  """(H, W) uint8 -> (size, size, 1) uint8: the whole picture, resized.

  Shrinking uses INTER_AREA, growing INTER_CUBIC, as training's resize.
  """
  h, w = gray_full.shape[:2]
  interp = cv2.INTER_AREA if min(h, w) >= size else cv2.INTER_CUBIC
  return cv2.resize(gray_full, (size, size), interpolation=interp)[..., None]


def check_upsampling(method: str) -> str:
  if method not in UPSAMPLING:
    raise ValueError(f'--chroma_upsampling={method!r}; expected one of '
                     f'{UPSAMPLING}')
  return method


def upsample_chroma(chroma: np.ndarray, gray_full: np.ndarray,
                    method: str = DEFAULT_UPSAMPLING) -> np.ndarray:
  """Chroma (S, S, 2) float32 -> (H, W, 2) on gray_full's (H, W) grid.

  'bilinear': cv2.INTER_LINEAR. 'guided': that, then a guided filter with
  the photo's gray (H, W) uint8 as the guide, radius GUIDED_RADIUS model
  pixels (in photo pixels: GUIDED_RADIUS * ceil(max(H, W) / S)) and eps
  GUIDED_EPS.
  """
  h, w = gray_full.shape[:2]
  up = cv2.resize(chroma, (w, h), interpolation=cv2.INTER_LINEAR)
  up = up.reshape(h, w, 2)
  if check_upsampling(method) == 'guided':
    radius = GUIDED_RADIUS * max(1, -(-max(h, w) // chroma.shape[0]))
    guide = gray_full.astype(np.float32) * np.float32(1.0 / 255.0)
    up = cv2.ximgproc.guidedFilter(guide, up, radius, GUIDED_EPS)
  return up


def combine(gray_full: np.ndarray, chroma: np.ndarray,
            upsampling: str = DEFAULT_UPSAMPLING) -> np.ndarray:
  """Input gray (H, W) uint8 + model chroma (S, S, 2) -> RGB uint8 (H, W, 3).

  The chroma, upsampled to (H, W) (`upsample_chroma`), on gray_full's
  luminance: the result's BT.601 luminance is gray_full up to rounding.
  """
  return ycrcb.merge(gray_full, upsample_chroma(
      np.asarray(chroma, np.float32), gray_full, upsampling))


def at_model_size(gray_small: np.ndarray, chroma: np.ndarray) -> np.ndarray:
  """Model gray (S, S[, 1]) uint8 + chroma (S, S, 2) -> RGB uint8 (S, S, 3):
  the model's own output, desaturated where it leaves the RGB cube."""
  return ycrcb.merge(np.asarray(gray_small).reshape(chroma.shape[:2]), chroma)


def tint(gray_full: np.ndarray, mean_chroma: Sequence[float]) -> np.ndarray:
  """(H, W) uint8 -> (H, W, 3) uint8: one constant chroma on the input's Y.

  `mean_chroma` is (Cr, Cb) in 8-bit units (`jaxcolor.color.mean_chroma`;
  the constant-tint baseline).
  """
  offsets = np.asarray(mean_chroma, np.float32) - ycrcb.NEUTRAL
  chroma = np.broadcast_to(offsets, gray_full.shape[:2] + (2,))
  return ycrcb.merge(gray_full, chroma)


def side_by_side(gray_full: np.ndarray, rgb: np.ndarray) -> np.ndarray:
  """(H, W) gray + (H, W, 3) colour -> (H, 2W, 3): gray | colour."""
  return np.concatenate([np.repeat(gray_full[..., None], 3, -1), rgb], axis=1)


def colorize_grays(predict: PredictChroma, size: int,
                   grays: Sequence[np.ndarray],
                   upsampling: str = DEFAULT_UPSAMPLING
                   ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
  """Gray photos (H, W) uint8 of any sizes -> (RGB uint8 (H, W, 3) each,
  the model's gray (B, S, S, 1) uint8, its chroma (B, S, S, 2))."""
  small = np.stack([model_gray(g, size) for g in grays])
  chroma = predict(small)
  return ([combine(g, c, upsampling) for g, c in zip(grays, chroma)],
          small, chroma)


def colorize_photos(predict: PredictChroma, size: int,
                    images: Sequence[np.ndarray], batch_size: int,
                    upsampling: str = DEFAULT_UPSAMPLING) -> list[np.ndarray]:
  """Decoded photos (any size; gray, RGB or RGBA uint8) -> RGB uint8, same
  size; `batch_size` photos at a time (`size`: the model's input side)."""
  out = []
  for i in range(0, len(images), batch_size):
    grays = [to_gray(im) for im in images[i:i + batch_size]]
    out.extend(colorize_grays(predict, size, grays, upsampling)[0])
  return out
