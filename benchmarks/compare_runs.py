"""Loss curves of two or more training runs, side by side (e.g. f32 vs bf16).

  python benchmarks/compare_runs.py runs/qs_f32 runs/qs_bf16 \
      --labels float32,bfloat16 --out docs/quickstart_f32_vs_bf16.png

Reads every run's TensorBoard scalars (`jaxcolor.modes.report.read_scalars`),
prints per tag the last logged value of each run, the mean over the run,
and how far each run is from the first one: the mean over the common
logged steps of |run - first|, relative to the mean |first|. Draws the
generator loss, L1, critic loss and validation PSNR of all runs overlaid.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxcolor.modes import report  # pylint: disable=g-import-not-at-top

TAGS = ('train/g_loss', 'train/l1', 'train/gan', 'train/saliency',
        'train/d_loss', 'train/d_real', 'train/d_fake', 'train/loss',
        'val/psnr', 'val/ssim', 'val/psnr_gray')
PANELS = (('train/g_loss', 'generator loss'), ('train/l1', 'L1(G(x), y)'),
          ('train/d_loss', 'critic loss'), ('val/psnr', 'validation PSNR'))


def summarise(runs: dict[str, dict]) -> list[dict]:
  """One row per tag logged by every run."""
  names = list(runs)
  first = runs[names[0]]
  rows = []
  for tag in TAGS:
    if not all(tag in r for r in runs.values()):
      continue
    row = {'tag': tag}
    for name in names:
      s = runs[name][tag]
      row[name] = {'last': float(s.values[-1]), 'mean': float(s.values.mean()),
                   'points': int(len(s.steps))}
    ref = first[tag]
    for name in names[1:]:
      s = runs[name][tag]
      common, i, j = np.intersect1d(ref.steps, s.steps, return_indices=True)
      if not len(common):
        continue
      diff = np.abs(s.values[j] - ref.values[i]).mean()
      row[name]['rel_mean_abs_diff'] = float(
          diff / (np.abs(ref.values[i]).mean() + 1e-12))
    rows.append(row)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('workdirs', nargs='+')
  p.add_argument('--labels', default='', help='comma list, one per run')
  p.add_argument('--out', default='', help='PNG of the overlaid curves')
  p.add_argument('--json', default='')
  a = p.parse_args()
  labels = a.labels.split(',') if a.labels else [
      os.path.basename(os.path.normpath(w)) for w in a.workdirs]
  if len(labels) != len(a.workdirs) or len(set(labels)) != len(labels):
    p.error('give one distinct label per run')
  runs = {l: report.read_scalars(w) for l, w in zip(labels, a.workdirs)}
  rows = summarise(runs)
  head = f'{"tag":16s}' + ''.join(f' {l + " last":>16s} {l + " mean":>16s}'
                                  for l in labels)
  head += ''.join(f' {"|" + l + "-" + labels[0] + "| rel":>22s}'
                  for l in labels[1:])
  print(head)
  for row in rows:
    line = f'{row["tag"]:16s}' + ''.join(
        f' {row[l]["last"]:16.4f} {row[l]["mean"]:16.4f}' for l in labels)
    line += ''.join(
        f' {100 * row[l].get("rel_mean_abs_diff", float("nan")):21.2f}%'
        for l in labels[1:])
    print(line)
  if a.out:
    panels = [({l: runs[l].get(tag) for l in labels}, title, '')
              for tag, title in PANELS]
    print('wrote', report._figure(  # pylint: disable=protected-access
        panels, a.out, ' vs '.join(labels)))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump({'runs': dict(zip(labels, a.workdirs)), 'tags': rows}, f,
                indent=1)


if __name__ == '__main__':
  main()
