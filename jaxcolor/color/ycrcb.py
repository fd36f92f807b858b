"""YCrCb (BT.601): the space where model chroma meets a photo's luminance.

Colorized photos are recombined from the input's own luminance and the
model's chroma in YCrCb with OpenCV's constants for 8-bit images:

  Y  = 0.299 R + 0.587 G + 0.114 B   (the same weights as cv2 RGB->GRAY,
                                      so Y of a gray input is its value)
  Cr = 0.713 (R - Y) + 128
  Cb = 0.564 (B - Y) + 128

RGB and Y are in [0, 255]; chroma is kept as offsets (Cr - 128, Cb - 128).
`merge` inverts this exactly for Y and shrinks the chroma of a pixel
towards gray where its colour would leave the RGB cube, so the output's
luminance is the input's up to rounding to 8 bit. `rgb_from_chroma` is
the same inverse, differentiable and unclipped, for models that predict
chroma (the GAN's model.output='chroma'); `chroma_from_rgb` is `split`'s
chroma in jnp, for models that predict RGB.
"""

import numpy as np

SPACE = 'YCrCb (BT.601, OpenCV 8-bit constants)'
NEUTRAL = 128.0
_W = np.array([0.299, 0.587, 0.114], np.float32)  # R, G, B weights of Y
_CR, _CB = 0.713, 0.564


def split(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """RGB (..., 3) in [0, 255] (any dtype) -> (Y (...), chroma (..., 2)).

  Chroma is (Cr - 128, Cb - 128), float32.
  """
  rgb = np.asarray(rgb, np.float32)
  y = rgb @ _W
  chroma = np.stack([_CR * (rgb[..., 0] - y), _CB * (rgb[..., 2] - y)], -1)
  return y, chroma


def chroma_from_rgb(rgb):
  """RGB (..., 3) -> chroma offsets (Cr - 128, Cb - 128) (..., 2), in
  RGB's units (e.g. [-1, 1] images give offsets / 127.5); a jax array.

  `split`'s chroma, for jitted code; linear, so nothing is clipped.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  y = (rgb[..., 0:1] * float(_W[0]) + rgb[..., 1:2] * float(_W[1]) +
       rgb[..., 2:3] * float(_W[2]))
  return jnp.concatenate((_CR * (rgb[..., 0:1] - y),
                          _CB * (rgb[..., 2:3] - y)), axis=-1)


def rgb_from_chroma(y, chroma):
  """Y (..., 1) + chroma offsets (..., 2) -> RGB (..., 3), in Y's units.

  Linear, so it holds in any units that map 0 to 0 (e.g. [-1, 1] images,
  whose offsets are (Cr - 128) / 127.5): BT.601 Y of the result is `y` up
  to float rounding. Not clipped: colours may leave the RGB cube. A jax
  array, differentiable.
  """
  # Imported here: the host-side helpers of this module need only numpy.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dr = chroma[..., 0:1] * (1.0 / _CR)
  db = chroma[..., 1:2] * (1.0 / _CB)
  dg = (dr * -float(_W[0]) - db * float(_W[2])) * (1.0 / float(_W[1]))
  return jnp.concatenate((y + dr, y + dg, y + db), axis=-1)


def merge(y: np.ndarray, chroma: np.ndarray) -> np.ndarray:
  """Y (H, W) in [0, 255] + chroma offsets (H, W, 2) -> RGB uint8 (H, W, 3).

  Out-of-gamut colours are desaturated (chroma scaled towards 0) until they
  fit, so Y is kept rather than clipped.
  """
  y = np.asarray(y, np.float32)
  chroma = np.asarray(chroma, np.float32)
  # RGB = Y + s * d keeps Y for every s; d per channel:
  dr = chroma[..., 0] * np.float32(1.0 / _CR)
  db = chroma[..., 1] * np.float32(1.0 / _CB)
  dg = (dr * -_W[0] - db * _W[2]) / _W[1]
  # The weighted mean of d is 0, so max(d) >= 0 >= min(d): the largest s
  # with 0 <= Y + s * d <= 255 is min((255 - Y) / max(d), Y / -min(d)).
  # (The floor of 1e-6 avoids 0 / 0 where d == 0.)
  up = np.maximum(np.maximum(np.maximum(dr, dg), db), 1e-6)
  down = np.maximum(-np.minimum(np.minimum(dr, dg), db), 1e-6)
  s = np.minimum((255.0 - y) / up, y / down)
  np.minimum(s, 1.0, out=s)
  out = np.empty(y.shape + (3,), np.uint8)
  for i, d in enumerate((dr, dg, db)):
    d *= s
    d += y
    np.rint(d, out=d)
    out[..., i] = np.clip(d, 0.0, 255.0)
  return out
