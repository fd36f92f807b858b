"""`--mode=colorize`: photos of any size in, colour photos of the same size out.

Each photo goes through `jaxcolor.color.recombine`: made gray, colorized at
the model's resolution, and the model's chroma upsampled onto the photo's
own full-resolution luminance, so outputs are as sharp as the input.

Outputs are PNG (lossless), named after the input's stem (`a.jpg` ->
`a.png`; should two inputs of one folder share a stem, the later one keeps
its full name: `a.jpg.png`), in the same sub-folders as in the input
folder. Unreadable files are skipped with a warning and counted. Inputs are
never overwritten. Each PNG appears whole or not at all; one run at a time
writes to an output folder (a lock); a full or read-only disk stops the run
with one line, as does SIGTERM (saying how many photos were written).

This module must not import TensorFlow (the command starts fast).
"""

import errno
import os
import sys
import time
from typing import Optional, Sequence

from absl import logging

from jaxcolor import inference
from jaxcolor import summaries
from jaxcolor.color import recombine
from jaxcolor.runtime import files
from jaxcolor.runtime import folder_lock
from jaxcolor.runtime import stop_signals


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


class OutputFailedError(ValueError):
  """The output folder stopped taking files (a full or read-only disk)."""


def run(model_path: str, input_path: str, output_dir: str, *,
        side_by_side_output: bool = False,
        batch_size: int = inference.DEFAULT_BATCH_SIZE,
        overwrite: bool = False, step: Optional[int] = None,
        chroma_upsampling: str = recombine.DEFAULT_UPSAMPLING,
        allowed_families: Sequence[str] = ()) -> dict[str, int]:
  """The --mode=colorize command; returns {'written', 'skipped', 'kept'}.

  Files already in `output_dir` are left alone (listed, counted as 'kept')
  unless `overwrite`: a run never replaces a file it did not write. Raises
  ValueError (after the count) when photos were to be written and none
  could be; OutputFailedError when the folder stops taking files;
  stop_signals.Stopped on SIGTERM/SIGINT (its `detail` says how far it got).

  Args:
    model_path: a training workdir or an export bundle.
    input_path: a photo, or a folder searched recursively.
    output_dir: where the PNGs go (sub-folders mirror the input's).
    side_by_side_output: write gray | colour instead of the colour photo.
    batch_size: photos per model call.
    overwrite: replace files already in `output_dir`.
    step: the checkpoint step of a workdir (default: the newest intact).
    chroma_upsampling: one of `recombine.UPSAMPLING`.
    allowed_families: import paths of families the model may name.
  """
  recombine.check_upsampling(chroma_upsampling)
  pairs = plan(input_path, output_dir)
  inference.check_model_folder(model_path)
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
  # Read and checked before the output folder is made or locked.
  predictor = inference.load(model_path, batch_size=batch_size, step=step,
                             allowed_families=allowed_families)
  with folder_lock.output_folder(output_dir, 'colorize run'), \
      stop_signals.raised():
    return _colorize(predictor, model_path, pairs, len(kept), output_dir,
                     side_by_side_output, chroma_upsampling)


def _colorize(predictor, model_path, pairs, kept, output_dir,
              side_by_side_output, chroma_upsampling) -> dict[str, int]:
  """`run` once the model is loaded and the output folder held."""
  batch_size = predictor.batch_size
  max_pixels = predictor.config.data.get('max_image_pixels', 100_000_000)
  max_bytes = predictor.config.data.get('max_file_bytes', None)
  logging.info('Colorizing %d photo(s) with %s (%s, step %d, %d px) into %s',
               len(pairs), model_path, predictor.model_name, predictor.step,
               predictor.image_size, output_dir)
  progress = Progress(len(pairs))
  written = skipped = 0
  left = f', {kept} left alone (already there)' if kept else ''
  try:
    for i in range(0, len(pairs), batch_size):
      batch, images = [], []
      for src, dst in pairs[i:i + batch_size]:
        try:
          images.append(inference.read_photo(src, max_pixels, max_bytes))
          batch.append((src, dst))
        except ValueError as e:  # BadImageError: the reason is its message
          logging.warning('Skipping %s: %s', src, e)
          skipped += 1
      for (src, dst), image, rgb in zip(
          batch, images, inference.colorize_photos(predictor, images,
                                                   chroma_upsampling)):
        if side_by_side_output:
          rgb = recombine.side_by_side(recombine.to_gray(image), rgb)
        try:
          summaries.write_png(dst, rgb)
          written += 1
        except OSError as e:
          if files.is_target_fault(e) and e.errno != errno.ENAMETOOLONG:
            raise OutputFailedError(
                f'cannot write {dst}: {e.strerror or e}; stopped after '
                f'{written} photo(s) written to {output_dir}') from e
          logging.warning('Could not write %s (from %s): %s', dst, src, e)
          skipped += 1
      progress.update(written + skipped, skipped)
  except stop_signals.Stopped as e:
    progress.update(written + skipped, skipped, final=True)
    e.detail = f' after {written} photo(s) written to {output_dir}'
    raise
  progress.update(written + skipped, skipped, final=True)
  print(f'colorize: {written} written, {skipped} skipped{left} -> '
        f'{output_dir}')
  if not written:
    raise ValueError(f'no photo written: all {skipped} input(s) were '
                     'unreadable (see the warnings above)')
  return {'written': written, 'skipped': skipped, 'kept': kept}


def main(config, args) -> None:
  del config  # the run's own, read from --workdir
  run(args.workdir, args.input, args.output,
      side_by_side_output=args.side_by_side, overwrite=args.overwrite,
      step=args.step, chroma_upsampling=args.chroma_upsampling,
      allowed_families=args.allow_families)
