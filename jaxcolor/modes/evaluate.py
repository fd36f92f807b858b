"""--mode=evaluate: colorize the gray versions of colour photos and score them.

Each colour photo under the input folder (recursively) is made gray with
training's formula and colorized at full resolution exactly as
`--mode=colorize` does (`jaxcolor.color.recombine`). The result is scored
against the photo, next to two trivial baselines that any colorizer must beat:

  gray copy      the gray input, replicated to RGB (no colour at all);
  constant tint  the training set's mean chroma on the input's own
                 luminance (`Predictor.mean_chroma`).

On real photos the constant tint beats the gray copy on PSNR while having
almost no colour (docs/results.md), so a model is judged on PSNR and
colourfulness together. The same is measured at the model's resolution
(S x S): the model's own output (its chroma on its gray input, desaturated
where it leaves the RGB cube) against the photo resized as the model's
input is (the whole picture, squashed to a square).

Metrics (`jaxcolor.metrics`): PSNR (dB) and SSIM of dm-pix on RGB in
[0, 1]; colourfulness of Hasler and Suesstrunk (2003) on 0..255, also of the
photo itself. Writes to the output folder:
  evaluation.json  settings, per-image figures, means, timings, skipped files
  evaluation.md    the means as a table (model / gray copy / constant tint)
  examples.png     gray | output | truth for the first photos
Unreadable files and gray photos (nothing to compare colours against) are
skipped, counted and named.
"""

import math
import os
import time
from typing import Any, Optional, Sequence

from absl import logging
import cv2
import jax
import numpy as np

from jaxcolor import inference
from jaxcolor import metrics
from jaxcolor import summaries
from jaxcolor.color import recombine
from jaxcolor.data import preprocess
from jaxcolor.data import sources
from jaxcolor.runtime import files
from jaxcolor.runtime import folder_lock
from jaxcolor.runtime import stop_signals

JSON_FILE = 'evaluation.json'
MARKDOWN_FILE = 'evaluation.md'
EXAMPLES_FILE = 'examples.png'
# What is scored: the model and two baselines; the photo's own colourfulness.
CANDIDATES = ('model', 'gray', 'tint')
LABELS = {'model': 'model', 'gray': 'gray copy', 'tint': 'constant tint',
          'truth': 'ground truth'}
SCALES = ('full', 'model_res')
METRICS = ('psnr', 'ssim', 'colourfulness')
DEFINITIONS = {
    'psnr': 'dm_pix.psnr on RGB in [0, 1] (dB)',
    'ssim': 'dm_pix.ssim on RGB in [0, 1] (11-px Gaussian window)',
    'colourfulness': 'Hasler & Suesstrunk (2003) M on RGB in [0, 255]',
    'gray': 'the gray input replicated to RGB',
    'tint': "the training set's mean chroma (YCrCb) on the input's luminance",
    'full': "full resolution: the model's chroma on the photo's own gray",
    'model_res': ("the model's resolution: its chroma on its gray input "
                  '(desaturated where it leaves the RGB cube) against the '
                  'photo resized whole to image_size x image_size'),
}


def default_output_dir(workdir: str, input_dir: str) -> str:
  """<workdir>/evaluation/<input folder name>."""
  return os.path.join(workdir, 'evaluation',
                      os.path.basename(os.path.normpath(input_dir)))


def _resize_like_model(rgb: np.ndarray, size: int) -> np.ndarray:
  """RGB (H, W, 3) uint8 -> (size, size, 3) uint8, as recombine.model_gray."""
  return np.concatenate([recombine.model_gray(np.ascontiguousarray(rgb[..., c]),
                                             size) for c in range(3)], -1)


def _scores(truth: np.ndarray, candidates: dict[str, Optional[np.ndarray]]
            ) -> dict[str, Any]:
  """{name: {psnr, ssim, colourfulness} or None, 'truth': {colourfulness}}.

  truth: (H, W, 3) uint8; candidates: (H, W, 3) uint8 or float in [0, 1].
  """
  names = [k for k, v in candidates.items() if v is not None]
  stack = np.stack([metrics.unit_float(candidates[k]) for k in names])
  psnr, ssim = metrics.psnr_ssim(truth, stack)
  colour = metrics.colourfulness(stack)
  out = {k: None for k in candidates}
  for i, k in enumerate(names):
    out[k] = {'psnr': float(psnr[i]), 'ssim': float(ssim[i]),
              'colourfulness': float(colour[i])}
  out['truth'] = {'colourfulness': float(metrics.colourfulness(truth))}
  return out


def _means(records: list[dict]) -> dict[str, Any]:
  """Mean of every figure over the images with a finite value."""
  means = {}
  for scale in SCALES:
    means[scale] = {}
    for name in CANDIDATES + ('truth',):
      keys = ('colourfulness',) if name == 'truth' else METRICS
      if not records or records[0][scale][name] is None:
        means[scale][name] = None
        continue
      means[scale][name] = {}
      for key in keys:
        values = np.array([r[scale][name][key] for r in records], np.float64)
        values = values[np.isfinite(values)]
        means[scale][name][key] = float(values.mean()) if len(values) else None
  return means


def _finite(tree: Any) -> Any:
  """JSON has no NaN/inf: they become null (e.g. SSIM of a < 11-px image)."""
  if isinstance(tree, dict):
    return {k: _finite(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_finite(v) for v in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def _fmt(value: Optional[float], digits: int) -> str:
  return '–' if value is None else f'{value:.{digits}f}'


def markdown(result: dict) -> str:
  """The means of an evaluation.json as a markdown table."""
  means, s = result['means'], result['image_size']
  digits = {'psnr': 2, 'ssim': 4, 'colourfulness': 1}
  head = (['', 'PSNR (dB)', 'SSIM', 'colourfulness'] +
          [f'PSNR {s} px', f'SSIM {s} px', f'colourfulness {s} px'])
  lines = [
      f'# Evaluation: {result["model"]} (step {result["step"]}) on '
      f'{os.path.basename(os.path.normpath(result["input_dir"]))}', '',
      f'{result["num_images"]} colour photos from `{result["input_dir"]}`'
      f' ({result["num_skipped"]} skipped), made gray and colorized at full '
      f'resolution (chroma upsampling: '
      f'{result.get("chroma_upsampling", "bilinear")}), and at the model\'s '
      f'{s} px. Means over the photos.', '',
      '| ' + ' | '.join(head) + ' |',
      '| --- |' + ' ---: |' * (len(head) - 1)]
  for name in CANDIDATES + ('truth',):
    cells = [LABELS[name]]
    for scale in SCALES:
      figures = means[scale][name]
      for key in METRICS:
        value = figures.get(key) if figures else None
        cells.append(_fmt(value, digits[key]))
    lines.append('| ' + ' | '.join(cells) + ' |')
  t = result['timing']
  lines += [
      '',
      'PSNR and SSIM: dm-pix on RGB in [0, 1]. Colourfulness: Hasler & '
      'Süsstrunk (2003), 0 for a gray image. Gray copy: the input replicated '
      'to RGB. Constant tint: the training set\'s mean chroma on the input\'s '
      'luminance. A model must beat the constant tint on PSNR and come close '
      'to the ground truth\'s colourfulness.', '',
      f'Colorizing took {1000 * t["colorize_seconds_per_image"]:.1f} ms per '
      f'photo at full resolution (batch {t["batch_size"]}, '
      f'{t["device"]}; first-call compilation {t["warmup_seconds"]:.1f} s not '
      f'included); scoring took {1000 * t["metrics_seconds_per_image"]:.1f} '
      'ms per photo.']
  for note in result['notes']:
    lines += ['', f'Note: {note}']
  if result['skipped']:
    lines += ['', 'Skipped:', '']
    lines += [f'- `{s["file"]}`: {s["reason"]}' for s in result['skipped']]
  return '\n'.join(lines) + '\n'


def examples_grid(rows: list[tuple[np.ndarray, ...]], height: int
                  ) -> np.ndarray:
  """Rows of (gray (H,W), output (H,W,3), truth (H,W,3)) uint8 -> one image.

  Each row is resized to `height` (aspect kept), tiles get a 2-px white
  border and short rows are padded white on the right.
  """
  pad = 2
  strips = []
  for images in rows:
    tiles = []
    for image in images:
      if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
      h, w = image.shape[:2]
      width = max(1, round(w * height / h))
      interp = cv2.INTER_AREA if height < h else cv2.INTER_CUBIC
      image = cv2.resize(image, (width, height), interpolation=interp)
      tiles.append(np.pad(image, ((pad, pad), (pad, pad), (0, 0)),
                          constant_values=255))
    strips.append(np.concatenate(tiles, axis=1))
  width = max(s.shape[1] for s in strips)
  strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)),
                   constant_values=255) for s in strips]
  return np.concatenate(strips, axis=0)


def _record(rel: str, truth: np.ndarray, gray: np.ndarray, out: np.ndarray,
            gray_small: np.ndarray, chroma_small: np.ndarray,
            mean_chroma: Optional[tuple[float, float]],
            seconds: float) -> dict[str, Any]:
  """One photo's figures: the model and the baselines, at full size
  (truth (H,W,3), gray (H,W), out (H,W,3), uint8) and at the model's
  (its gray (S,S,1) uint8 and chroma (S,S,2)); `seconds` its colorize
  time."""
  tint = tint_small = None
  if mean_chroma is not None:
    tint = recombine.tint(gray, mean_chroma)
    tint_small = recombine.tint(gray_small[..., 0], mean_chroma)
  return {
      'file': rel, 'height': int(truth.shape[0]),
      'width': int(truth.shape[1]), 'colorize_seconds': seconds,
      'full': _scores(truth, {
          'model': out, 'gray': np.repeat(gray[..., None], 3, -1),
          'tint': tint}),
      'model_res': _scores(_resize_like_model(truth, gray_small.shape[0]), {
          'model': recombine.at_model_size(gray_small, chroma_small),
          'gray': np.repeat(gray_small, 3, -1),
          'tint': tint_small}),
  }


def _read(path: str, max_pixels: int, max_bytes: Optional[int]
          ) -> np.ndarray:
  """RGB uint8 of a colour photo; BadImageError for unusable or gray ones."""
  rgb = inference.read_photo(path, max_pixels, max_bytes)
  if (np.array_equal(rgb[..., 0], rgb[..., 1]) and
      np.array_equal(rgb[..., 1], rgb[..., 2])):
    raise preprocess.BadImageError(
        'a gray photo: there is no colour to compare against')
  return rgb


def run(workdir: str, input_dir: str, output_dir: Optional[str] = None, *,
        batch_size: int = inference.DEFAULT_BATCH_SIZE,
        num_examples: int = 8, example_height: int = 192,
        step: Optional[int] = None,
        chroma_upsampling: str = recombine.DEFAULT_UPSAMPLING,
        allowed_families: Sequence[str] = ()) -> dict[str, Any]:
  """The --mode=evaluate command; returns what evaluation.json holds.

  Args:
    workdir: a training workdir (its newest checkpoint) or an export bundle.
    input_dir: a folder of colour photos, searched recursively.
    output_dir: where the results go; default
      <workdir>/evaluation/<input folder name>.
    batch_size: photos per model call.
    num_examples: photos shown in examples.png.
    example_height: their height there, in pixels.
    step: the checkpoint step to evaluate (default: the newest intact one).
    chroma_upsampling: how the model's chroma reaches full resolution
      (`recombine.UPSAMPLING`).
    allowed_families: import paths of families the model may name.

  Raises:
    FileNotFoundError, ValueError: a missing model or folder, no images, or
      no usable colour photo among them.
  """
  recombine.check_upsampling(chroma_upsampling)
  photos = sources.list_images(input_dir, config_key='--input')
  output_dir = output_dir or default_output_dir(workdir, input_dir)
  out_real = os.path.realpath(output_dir) + os.sep
  photos = [f for f in photos  # never score our own examples.png
            if not os.path.realpath(os.path.join(input_dir, f)).startswith(
                out_real)]
  # Read and checked before the output folder is made or locked.
  predictor = inference.load(workdir, batch_size=batch_size, step=step,
                             allowed_families=allowed_families)
  with folder_lock.output_folder(output_dir, 'evaluate run'), \
      stop_signals.raised():
    return _evaluate(predictor, workdir, input_dir, output_dir, photos,
                     num_examples, example_height, chroma_upsampling)


def _evaluate(predictor, workdir, input_dir, output_dir, photos, num_examples,
              example_height, chroma_upsampling) -> dict[str, Any]:
  """`run` once the model is loaded and the output folder held."""
  batch_size = predictor.batch_size
  size = predictor.image_size
  max_pixels = predictor.config.data.get('max_image_pixels', 100_000_000)
  max_bytes = predictor.config.data.get('max_file_bytes', None)
  mean_chroma = predictor.mean_chroma
  notes = []
  if mean_chroma is None:
    notes.append('constant tint not scored: the model has no training-set '
                 'mean chroma (chroma.json)')
  logging.info('Evaluating %s (%s, step %d, %d px) on %d file(s) from %s',
               workdir, predictor.model_name, predictor.step, size,
               len(photos), input_dir)

  t = time.perf_counter()  # compiles the model before anything is timed
  predictor(np.zeros((batch_size, size, size, 1), np.uint8))
  warmup = time.perf_counter() - t

  records, skipped, examples = [], [], []
  colorize_s = metrics_s = 0.0
  for i in range(0, len(photos), batch_size):
    names, truths = [], []
    for rel in photos[i:i + batch_size]:
      try:
        truths.append(_read(os.path.join(input_dir, rel), max_pixels,
                            max_bytes))
        names.append(rel)
      except preprocess.BadImageError as e:
        logging.warning('Skipping %s: %s', rel, e)
        skipped.append({'file': rel, 'reason': str(e)})
    if not truths:
      continue
    # The colorize path, keeping the model-size gray and chroma.
    t = time.perf_counter()
    grays = [recombine.to_gray(x) for x in truths]
    outputs, small, chroma_small = recombine.colorize_grays(
        predictor, size, grays, chroma_upsampling)
    batch_s = time.perf_counter() - t
    colorize_s += batch_s

    t = time.perf_counter()
    for rel, truth, gray, out, g_small, c_small in zip(
        names, truths, grays, outputs, small, chroma_small):
      records.append(_record(rel, truth, gray, out, g_small, c_small,
                             mean_chroma, batch_s / len(truths)))
      if len(examples) < num_examples:
        examples.append((gray, out, truth))
    metrics_s += time.perf_counter() - t
    logging.info('evaluate: %d/%d files', min(i + batch_size, len(photos)),
                 len(photos))

  if not records:
    raise ValueError(f'--input={input_dir!r}: none of its {len(photos)} '
                     'image files is a readable colour photo (see the '
                     'warnings above)')
  n = len(records)
  if any(not math.isfinite(r[s][k]['ssim']) for r in records for s in SCALES
         for k in CANDIDATES if r[s][k]):
    notes.append('SSIM needs 11 px a side: smaller photos have no SSIM and '
                 'are left out of its means')
  result = _finite({
      'model': predictor.model_name,
      'step': predictor.step,
      'model_path': workdir,
      'image_size': size,
      'chroma_upsampling': chroma_upsampling,
      'mean_chroma_cr_cb': list(mean_chroma) if mean_chroma else None,
      'input_dir': input_dir,
      'output_dir': output_dir,
      'num_files': len(photos),
      'num_images': n,
      'num_skipped': len(skipped),
      'skipped': skipped,
      'definitions': DEFINITIONS,
      'means': _means(records),
      'images': records,
      'timing': {
          'device': jax.devices()[0].device_kind,
          'batch_size': batch_size,
          'warmup_seconds': warmup,
          'colorize_seconds_total': colorize_s,
          'colorize_seconds_per_image': colorize_s / n,
          'metrics_seconds_total': metrics_s,
          'metrics_seconds_per_image': metrics_s / n,
      },
      'notes': notes,
  })

  table = markdown(result)
  files.write_json(os.path.join(output_dir, JSON_FILE), result, indent=1,
                         allow_nan=False)
  files.write_text(os.path.join(output_dir, MARKDOWN_FILE), table)
  summaries.write_png(os.path.join(output_dir, EXAMPLES_FILE),
                      examples_grid(examples, example_height))
  print(table)
  print(f'evaluate: {n} photos scored, {len(skipped)} skipped -> '
        f'{output_dir}/{{{JSON_FILE},{MARKDOWN_FILE},{EXAMPLES_FILE}}}')
  return result


def main(config, args) -> None:
  del config  # the run's own, read from --workdir
  run(args.workdir, args.input, args.output, step=args.step,
      chroma_upsampling=args.chroma_upsampling,
      allowed_families=args.allow_families)
