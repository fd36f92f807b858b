"""--mode=report: a training run's curves as PNG plots, from its own logs.

Reads the scalars the trainer wrote to the TensorBoard event files in the
workdir and draws, into <workdir>/report/, the figures the run's model
family names (`Family.report_figures`; the model is read from the run's
saved config):
  losses.png      GAN: generator loss and its parts L1, GAN, saliency (the
                  paper's Figures 1 and 7); CIC: the cross-entropy (Figure 3)
  critic.png      GAN: critic loss and mean D(real), D(fake) (Figure 8)
  validation.png  validation PSNR and SSIM of the model and of the gray copy
                  (every model)
Curves with many points are drawn raw (faint) and smoothed like
TensorBoard's default (exponential moving average, weight 0.6).
"""

import dataclasses
import glob
import os
from typing import Optional, Sequence

from absl import logging
import numpy as np

from jaxcolor import families
from jaxcolor.runtime import files
from jaxcolor.runtime import saved_config

EVENT_GLOB = 'events.out.tfevents.*'
SMOOTHING = 0.6
SMOOTH_FROM = 20   # points; shorter curves are drawn as they are
# The paper's colours: generator parts, then real/fake and model/gray.
_COLOURS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple')


@dataclasses.dataclass(frozen=True)
class Series:
  """One scalar tag over training: steps (N,) int64, values (N,) float64."""
  steps: np.ndarray
  values: np.ndarray


def event_files(workdir: str) -> list[str]:
  """The run's event files (directly in `workdir`), oldest first.

  Raises:
    FileNotFoundError: `workdir` is missing or holds no event files.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'--workdir={workdir!r} is not an existing folder')
  paths = sorted(glob.glob(os.path.join(workdir, EVENT_GLOB)))
  if not paths:
    raise FileNotFoundError(
        f'--workdir={workdir!r} holds no TensorBoard event files '
        f'({EVENT_GLOB}); point it at a training run\'s workdir')
  return paths


def _scalar(value) -> Optional[float]:
  """A summary value as a float: simple_value or a 1-element numeric tensor."""
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  kind = value.WhichOneof('value')
  if kind == 'simple_value':
    return float(value.simple_value)
  if kind == 'tensor':
    if value.tensor.dtype == 7:  # DT_STRING: images, text
      return None
    array = tensor_util.make_ndarray(value.tensor)
    if array.size == 1 and np.issubdtype(array.dtype, np.number):
      return float(array.reshape(()))
  return None


def read_scalars(workdir: str) -> dict[str, Series]:
  """Every scalar tag in the run's event files.

  clu writes scalars as tensor summaries, older writers as simple values;
  both are read. A step logged twice (a resumed run repeats the steps after
  its last checkpoint) keeps the value written last.
  """
  # Imported here: it pulls in TensorFlow, which other modes do not need.
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  points = {}   # tag -> {step: (wall_time, order, value)}
  order = 0
  for path in event_files(workdir):
    for event in event_file_loader.EventFileLoader(path).Load():
      if not event.HasField('summary'):
        continue
      for value in event.summary.value:
        if value.tag.startswith('_hparams_'):
          continue
        x = _scalar(value)
        if x is None:
          continue
        order += 1
        by_step = points.setdefault(value.tag, {})
        key = (event.wall_time, order)
        if event.step not in by_step or by_step[event.step][:2] < key:
          by_step[event.step] = (event.wall_time, order, x)
  out = {}
  for tag, by_step in points.items():
    steps = np.array(sorted(by_step), np.int64)
    out[tag] = Series(steps, np.array([by_step[s][2] for s in steps],
                                      np.float64))
  return out


def smooth(values: np.ndarray, weight: float = SMOOTHING) -> np.ndarray:
  """TensorBoard's debiased exponential moving average (N,) -> (N,)."""
  out = np.empty_like(values, np.float64)
  last, debias = 0.0, 1.0
  for i, v in enumerate(values):
    last = last * weight + (1 - weight) * v
    debias *= weight
    out[i] = last / (1 - debias)
  return out


def _checked(saved: dict, source: str, allowed: Sequence[str]) -> dict:
  """`saved` with today's keys, once its family name is allowed
  (`families.check_saved_name`: nothing is imported before)."""
  model = saved.get('model') if isinstance(saved, dict) else None
  families.check_saved_name((model or {}).get('name'), source, allowed)
  return families.upgrade_config(saved, allowed)


def _run_config(workdir: str, allowed: Sequence[str] = ()) -> dict:
  """The run's saved config: <workdir>/config.json, or else the newest
  checkpoint's (runs older than config.json), with today's keys.

  Raises:
    ValueError: neither holds a readable config, or it names a family that
      is neither registered nor `allowed` (nothing is imported).
  """
  saved = saved_config.read_run_config(workdir)
  if saved is not None:
    return _checked(saved, os.path.join(workdir,
                                        saved_config.RUN_CONFIG_FILE), allowed)
  from jaxcolor.runtime import checkpoint  # pylint: disable=g-import-not-at-top
  for step_dir in reversed(checkpoint.step_dirs(workdir)):
    try:
      return _checked(checkpoint.read_saved_config(step_dir),
                      os.path.join(step_dir, 'config', 'metadata'), allowed)
    except (OSError, checkpoint.DamagedCheckpointError, KeyError) as e:
      logging.warning('report: cannot read the config of %s (%s)', step_dir, e)
  raise ValueError(
      f'--workdir={workdir!r} holds no saved config ({saved_config.RUN_CONFIG_FILE}'
      ' or a checkpoint): the model it trained is unknown')


class _Scalars:
  """`get(tag)` -> Series or None, with the logged `tags`."""

  def __init__(self, scalars: dict[str, Series]):
    self._scalars = scalars
    self.tags = sorted(scalars)

  def __call__(self, tag: str) -> Optional[Series]:
    return self._scalars.get(tag)


def _plot(ax, series: dict[str, Series], title: str, ylabel: str = ''):
  """Draws labelled curves on one axis; a missing tag is left out."""
  drawn = False
  for i, (label, s) in enumerate(series.items()):
    if s is None or not len(s.steps):
      continue
    colour = _COLOURS[i % len(_COLOURS)]
    if len(s.steps) >= SMOOTH_FROM:
      ax.plot(s.steps, s.values, color=colour, alpha=0.25, linewidth=1)
      ax.plot(s.steps, smooth(s.values), color=colour, label=label)
    else:
      ax.plot(s.steps, s.values, color=colour, label=label,
              marker='o' if len(s.steps) < 5 else None)
    drawn = True
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_title(title)
  ax.set_xlabel('step')
  if ylabel:
    ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  if drawn:
    ax.legend()
  else:
    ax.text(0.5, 0.5, 'not logged', ha='center', va='center',
            transform=ax.transAxes)


def _figure(panels: list, path: str, suptitle: str) -> str:
  """panels: [(series dict, title, ylabel)], drawn side by side (2 a row)."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  cols = min(2, len(panels))
  rows = -(-len(panels) // cols)
  fig = figure.Figure(figsize=(6 * cols, 4 * rows), layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, (series, title, ylabel) in zip(axes, panels):
    _plot(ax, series, title, ylabel)
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  fig.suptitle(suptitle)
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, format='png')
  return path


def run(workdir: str, allowed_families: Sequence[str] = ()) -> list[str]:
  """Draws the run's curves into <workdir>/report/; returns the PNG paths.

  `allowed_families`: import paths of families the run's config may name.

  Raises:
    FileNotFoundError: no event files in `workdir`.
    ValueError: no saved config, or the event files hold no training losses.
  """
  scalars = read_scalars(workdir)
  get = _Scalars(scalars)
  config = _run_config(workdir, allowed_families)
  model = config.get('model', {}).get('name', '')
  family = families.family_class(model)
  name = f'{os.path.basename(os.path.normpath(workdir))} ({model})'
  figures = [f for f in family.report_figures(get, config)
             if any(s is not None and len(s.steps)
                    for series, _, _ in f['panels'] for s in series.values())]
  if not figures:
    raise ValueError(
        f'the event files in {workdir!r} hold none of the training losses of '
        f'the {model!r} model; has the run logged a step yet? '
        f'Tags found: {", ".join(get.tags) or "none"}')
  figures.append({'file': 'validation.png', 'title': 'validation', 'panels': [
      ({'model': get('val/psnr'), 'gray copy': get('val/psnr_gray')},
       'validation PSNR', 'dB'),
      ({'model': get('val/ssim'), 'gray copy': get('val/ssim_gray')},
       'validation SSIM', '')]})
  out_dir = os.path.join(workdir, 'report')
  files.check_writable(out_dir)
  written = []
  for fig in figures:
    if fig['file'] == 'validation.png' and 'val/psnr' not in scalars:
      continue
    written.append(_figure(fig['panels'], os.path.join(out_dir, fig['file']),
                           f'{name}: {fig["title"]}'))
  return written


def main(config, args) -> None:
  del config  # the run's own, read from --workdir
  for path in run(args.workdir, args.allow_families):
    print(path)
