"""`--mode=colorize`: photos of any size in, colour photos of the same size out.

Each photo is made gray (colour photos with the training formula), resized
whole to the model's square input (the aspect ratio is restored later), and
colorized at the model's resolution. Only the model's chroma is kept: it is
upsampled to the photo's size and recombined with the photo's own
full-resolution luminance in YCrCb (`jaxcolor.chroma`), so outputs are as
sharp as the input and their luminance is the input's gray up to rounding.
The upsampling (`--chroma_upsampling`) is bilinear, or 'guided': bilinear,
then a guided filter (He et al.; OpenCV contrib's ximgproc) steered by the
photo's own full-resolution gray, so colour follows its edges.

Outputs are PNG (lossless), named after the input's stem (`a.jpg` ->
`a.png`; should two inputs of one folder share a stem, the later one keeps
its full name: `a.jpg.png`), in the same sub-folders as in the input
folder. Unreadable files are skipped with a warning and counted. Inputs are
never overwritten.

This module must not import TensorFlow (the command starts fast).
"""

import os
import sys
import time
from typing import Any, Optional, Sequence

from absl import logging
import cv2
import numpy as np

from jaxcolor import chroma as chroma_lib

DEFAULT_BATCH_SIZE = 8
# --chroma_upsampling: how the model's chroma reaches the photo's size.
UPSAMPLING = ('bilinear', 'guided')
DEFAULT_UPSAMPLING = 'bilinear'
# The guided filter's window radius in model pixels, and its regulariser
# for a guide in [0, 1] (edges whose local gray variance is above ~eps are
# kept, flatter areas smoothed). Chosen on CBSD68 outputs of the paper's
# model (docs/results.md): radius 1/2/3 gave +0.29/+0.39/+0.45 dB over
# bilinear and the same SSIM (+0.022); eps 1e-2..1e-4 changed <0.02 dB.
GUIDED_RADIUS = 2
GUIDED_EPS = 1e-3


# ------------------------------------------------------------------ pixels
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


def combine(gray_full: np.ndarray, rgb_model: np.ndarray,
            upsampling: str = DEFAULT_UPSAMPLING) -> np.ndarray:
  """Input gray (H, W) uint8 + model RGB (S, S, 3) float in [0, 1] -> (H, W, 3).

  The model's chroma, upsampled to (H, W) (`upsample_chroma`), on
  gray_full's luminance: uint8 RGB whose BT.601 luminance is gray_full up
  to rounding.
  """
  _, chroma = chroma_lib.split(np.asarray(rgb_model, np.float32) * 255.0)
  return chroma_lib.merge(gray_full,
                          upsample_chroma(chroma, gray_full, upsampling))


def tint(gray_full: np.ndarray, mean_chroma: Sequence[float]) -> np.ndarray:
  """(H, W) uint8 -> (H, W, 3) uint8: one constant chroma on the input's Y.

  `mean_chroma` is (Cr, Cb) in 8-bit units, e.g. `Predictor.mean_chroma`
  (the constant-tint baseline).
  """
  offsets = np.asarray(mean_chroma, np.float32) - chroma_lib.NEUTRAL
  chroma = np.broadcast_to(offsets, gray_full.shape[:2] + (2,))
  return chroma_lib.merge(gray_full, chroma)


def side_by_side(gray_full: np.ndarray, rgb: np.ndarray) -> np.ndarray:
  """(H, W) gray + (H, W, 3) colour -> (H, 2W, 3): gray | colour."""
  return np.concatenate([np.repeat(gray_full[..., None], 3, -1), rgb], axis=1)


def colorize_images(predictor: Any, images: Sequence[np.ndarray],
                    batch_size: int = DEFAULT_BATCH_SIZE,
                    upsampling: str = DEFAULT_UPSAMPLING) -> list[np.ndarray]:
  """Decoded photos (any size; gray, RGB or RGBA uint8) -> RGB uint8, same size.

  `predictor` is an `inference.Predictor`; `batch_size` photos at a time;
  `upsampling` one of UPSAMPLING.
  """
  out = []
  for i in range(0, len(images), batch_size):
    grays = [to_gray(im) for im in images[i:i + batch_size]]
    small = np.stack([model_gray(g, predictor.image_size) for g in grays])
    rgb = predictor(small)
    out.extend(combine(g, c, upsampling) for g, c in zip(grays, rgb))
  return out


# ------------------------------------------------------------------ files
def plan(input_path: str, output_dir: str) -> list[tuple[str, str]]:
  """[(input file, output file)] for a file or a folder (recursive).

  Raises:
    FileNotFoundError: `input_path` does not exist.
    ValueError: no output folder, an output folder that is the input
      folder, an output that would replace an input, or no images.
  """
  if not input_path:
    raise ValueError('--input=PATH (a photo or a folder) is required')
  if not output_dir:
    raise ValueError('--output=DIR (a folder for the results) is required')
  if not os.path.exists(input_path):
    raise FileNotFoundError(f'--input={input_path!r} does not exist')
  out_real = os.path.realpath(output_dir)
  if os.path.isdir(input_path):
    if os.path.realpath(input_path) == out_real:
      raise ValueError(f'--output={output_dir!r} is the input folder; choose '
                       'another folder (inputs are never overwritten)')
    from jaxcolor.data import sources  # pylint: disable=g-import-not-at-top
    root = input_path
    rels = sources.list_images(input_path, config_key='--input',
                               exclude=out_real)
  else:
    root, rels = os.path.dirname(input_path), [os.path.basename(input_path)]
  pairs, taken = [], set()
  for rel in rels:
    sub, name = os.path.split(rel)
    out = os.path.join(sub, os.path.splitext(name)[0] + '.png')
    if out in taken:
      out = os.path.join(sub, name + '.png')
    taken.add(out)
    pairs.append((os.path.join(root, rel), os.path.join(output_dir, out)))
  inputs = {os.path.realpath(i) for i, _ in pairs}
  clash = [o for _, o in pairs if os.path.realpath(o) in inputs]
  if clash:
    raise ValueError(f'writing to --output={output_dir!r} would overwrite the '
                     f'input {clash[0]!r}; choose another folder')
  return pairs


class Progress:
  """A one-line progress report on stderr ('\\r'-updated on a terminal)."""

  def __init__(self, total: int, stream=None, every_s: float = 1.0):
    self.total, self.stream, self.every_s = total, stream or sys.stderr, every_s
    self.start = self.last = time.time()
    self.shown = None
    self.tty = getattr(self.stream, 'isatty', lambda: False)()

  def update(self, done: int, skipped: int, final: bool = False) -> None:
    now = time.time()
    if final and self.shown == (done, skipped):
      if self.tty:
        self.stream.write('\n')  # keep the last '\r' line
      return
    if not final and now - self.last < self.every_s:
      return
    self.last, self.shown = now, (done, skipped)
    rate = done / max(now - self.start, 1e-9)
    line = (f'colorize: {done}/{self.total} photos, {skipped} skipped, '
            f'{rate:.1f} photos/s')
    end = '\n' if final or not self.tty else ''
    self.stream.write(('\r' if self.tty else '') + line + end)
    self.stream.flush()


def read_photo(path: str, max_pixels: int) -> np.ndarray:
  """A photo file -> RGB uint8 (H, W, 3) (`preprocess.decode_image`);
  BadImageError (a ValueError) for an unusable file."""
  from jaxcolor.data import preprocess  # pylint: disable=g-import-not-at-top
  return preprocess.decode_image(preprocess.read_file(path),
                                 max_pixels=max_pixels)


def _write_png(path: str, rgb: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  if not ok:
    raise OSError(f'cannot encode {path}')
  with open(path, 'wb') as f:
    f.write(buf.tobytes())


def run(model_path: str, input_path: str, output_dir: str, *,
        side_by_side_output: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False,
        step: Optional[int] = None,
        chroma_upsampling: str = DEFAULT_UPSAMPLING) -> dict[str, int]:
  """The --mode=colorize command; returns {'written', 'skipped', 'kept'}.

  Files already in `output_dir` are left alone (listed, counted as 'kept')
  unless `overwrite`: a run never replaces a file it did not write. Raises
  ValueError (after the count) when photos were to be written and none
  could be.

  Args:
    model_path: a training workdir or an export bundle.
    input_path: a photo, or a folder searched recursively.
    output_dir: where the PNGs go (sub-folders mirror the input's).
    side_by_side_output: write gray | colour instead of the colour photo.
    batch_size: photos per model call.
    overwrite: replace files already in `output_dir`.
    step: the checkpoint step of a workdir (default: the newest intact).
    chroma_upsampling: one of UPSAMPLING.
  """
  from jaxcolor import inference  # pylint: disable=g-import-not-at-top
  check_upsampling(chroma_upsampling)
  pairs = plan(input_path, output_dir)
  kept = [dst for _, dst in pairs if os.path.lexists(dst)] if not overwrite \
      else []
  if kept:
    shown = ', '.join(kept[:5]) + (f' and {len(kept) - 5} more'
                                   if len(kept) > 5 else '')
    logging.warning('Leaving %d file(s) already in --output=%s alone (not '
                    'written by this run; --overwrite replaces them): %s',
                    len(kept), output_dir, shown)
    kept_set = set(kept)
    pairs = [(src, dst) for src, dst in pairs if dst not in kept_set]
  if not pairs:
    print(f'colorize: 0 written, {len(kept)} left alone (already in '
          f'{output_dir}; --overwrite replaces them)')
    return {'written': 0, 'skipped': 0, 'kept': len(kept)}
  predictor = inference.load(model_path, batch_size=batch_size, step=step)
  max_pixels = predictor.config.data.get('max_image_pixels', 100_000_000)
  logging.info('Colorizing %d photo(s) with %s (%s, step %d, %d px) into %s',
               len(pairs), model_path, predictor.model_name, predictor.step,
               predictor.image_size, output_dir)
  progress = Progress(len(pairs))
  written = skipped = 0
  for i in range(0, len(pairs), batch_size):
    batch, images = [], []
    for src, dst in pairs[i:i + batch_size]:
      try:
        images.append(read_photo(src, max_pixels))
        batch.append((src, dst))
      except ValueError as e:  # BadImageError: the reason is its message
        logging.warning('Skipping %s: %s', src, e)
        skipped += 1
    for (src, dst), image, rgb in zip(
        batch, images, colorize_images(predictor, images, batch_size,
                                       chroma_upsampling)):
      if side_by_side_output:
        rgb = side_by_side(to_gray(image), rgb)
      try:
        _write_png(dst, rgb)
        written += 1
      except OSError as e:
        logging.warning('Could not write %s (from %s): %s', dst, src, e)
        skipped += 1
    progress.update(written + skipped, skipped)
  progress.update(written + skipped, skipped, final=True)
  left = f', {len(kept)} left alone (already there)' if kept else ''
  print(f'colorize: {written} written, {skipped} skipped{left} -> '
        f'{output_dir}')
  if not written:
    raise ValueError(f'no photo written: all {skipped} input(s) were '
                     'unreadable (see the warnings above)')
  return {'written': written, 'skipped': skipped, 'kept': len(kept)}
