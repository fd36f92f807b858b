"""--mode=evaluate: every JSON field, baselines computed directly, all models."""

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest

from jaxcolor.modes import evaluate
from jaxcolor import inference
from jaxcolor import metrics
from jaxcolor.color import recombine
import imagefactory
import helpers

TOP_KEYS = {
    'model', 'step', 'model_path', 'image_size', 'chroma_upsampling',
    'mean_chroma_cr_cb',
    'input_dir', 'output_dir', 'num_files', 'num_images', 'num_skipped',
    'skipped', 'definitions', 'means', 'images', 'timing', 'notes'}
IMAGE_KEYS = {'file', 'height', 'width', 'colorize_seconds', 'full',
              'model_res'}
SCALE_KEYS = {'model', 'gray', 'tint', 'truth'}
SCORE_KEYS = {'psnr', 'ssim', 'colourfulness'}
TIMING_KEYS = {
    'device', 'batch_size', 'warmup_seconds', 'colorize_seconds_total',
    'colorize_seconds_per_image', 'metrics_seconds_total',
    'metrics_seconds_per_image'}
DEFINITION_KEYS = {'psnr', 'ssim', 'colourfulness', 'gray', 'tint', 'full',
                   'model_res'}


def known_rgb() -> np.ndarray:
  """A 48 x 72 colour image with smooth and noisy parts (uint8 RGB)."""
  rng = np.random.default_rng(7)
  y, x = np.mgrid[0:48, 0:72]
  rgb = np.stack([x * 3.5, y * 5.0, 255 - x * 3.0], -1)
  rgb = rgb + rng.normal(0, 12, rgb.shape)
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """3 colour photos (one in a sub-folder, one portrait), a gray one, 2 bad."""
  folder = tmp_path_factory.mktemp('photos')
  imagefactory.copy_samples(str(folder), 1)
  imagefactory.copy_samples(str(folder / 'sub'), 1, start=1)
  imagefactory.write(str(folder / 'known.png'),
                     imagefactory.png_bytes(known_rgb()))
  rgb = imagefactory.sample_rgb(2)
  imagefactory.write(str(folder / 'portrait.png'), imagefactory.png_bytes(
      np.ascontiguousarray(np.rot90(rgb))))
  imagefactory.write(str(folder / 'gray.png'), imagefactory.gray_png(rgb))
  imagefactory.write(str(folder / 'text.jpg'),
                     imagefactory.BAD_KINDS['text.jpg'](rgb))
  imagefactory.write(str(folder / 'truncated.jpg'),
                     imagefactory.truncated_jpeg(rgb))
  return str(folder)


@pytest.fixture(scope='module')
def few_photos(tmp_path_factory):
  folder = tmp_path_factory.mktemp('few')
  imagefactory.write(str(folder / 'known.png'),
                     imagefactory.png_bytes(known_rgb()))
  imagefactory.copy_samples(str(folder), 1, start=3)
  return str(folder)


@pytest.fixture(scope='module')
def gan_result(tmp_path_factory, photos):
  workdir = helpers.gan_run(tmp_path_factory)
  return workdir, evaluate.run(workdir, photos)


def by_file(result, name):
  (record,) = [r for r in result['images'] if r['file'] == name]
  return record


def test_json_has_every_field(gan_result, photos):
  workdir, result = gan_result
  out = os.path.join(workdir, 'evaluation', os.path.basename(photos))
  assert result['output_dir'] == out
  with open(os.path.join(out, 'evaluation.json')) as f:
    saved = json.load(f)
  assert saved == result
  assert set(saved) == TOP_KEYS
  assert set(saved['definitions']) == DEFINITION_KEYS
  assert set(saved['timing']) == TIMING_KEYS
  assert saved['model'] == 'edge_saliency_gan' and saved['step'] == 2
  assert saved['chroma_upsampling'] == 'bilinear'
  assert saved['image_size'] == 64 and len(saved['mean_chroma_cr_cb']) == 2
  assert saved['num_files'] == 7 and saved['num_images'] == 4
  first, second = map(os.path.basename, imagefactory.sample_files()[:2])
  assert [r['file'] for r in saved['images']] == sorted(
      ['known.png', 'portrait.png', first, f'sub/{second}'])
  for record in saved['images']:
    assert set(record) == IMAGE_KEYS
    for scale in ('full', 'model_res'):
      assert set(record[scale]) == SCALE_KEYS
      assert set(record['full']['truth']) == {'colourfulness'}
      for name in ('model', 'gray', 'tint'):
        assert set(record[scale][name]) == SCORE_KEYS
        assert all(np.isfinite(v) for v in record[scale][name].values())
      assert record[scale]['gray']['colourfulness'] == 0.0
      assert record[scale]['truth']['colourfulness'] > 0
  assert set(saved['means']) == {'full', 'model_res'}
  for scale in ('full', 'model_res'):
    for name in ('model', 'gray', 'tint'):
      for key in SCORE_KEYS:
        np.testing.assert_allclose(
            saved['means'][scale][name][key],
            np.mean([r[scale][name][key] for r in saved['images']]))
  t = saved['timing']
  assert t['colorize_seconds_per_image'] > 0 and t['metrics_seconds_total'] > 0
  np.testing.assert_allclose(t['colorize_seconds_total'],
                             sum(r['colorize_seconds'] for r in saved['images']))


def test_skips_bad_and_gray_files_by_name(gan_result):
  _, result = gan_result
  assert result['num_skipped'] == 3
  reasons = {s['file']: s['reason'] for s in result['skipped']}
  assert set(reasons) == {'gray.png', 'text.jpg', 'truncated.jpg'}
  assert 'gray photo' in reasons['gray.png']
  assert 'truncated' in reasons['truncated.jpg']


def test_baselines_on_a_known_image_equal_direct_computations(gan_result):
  _, result = gan_result
  truth = known_rgb()
  record = by_file(result, 'known.png')
  assert (record['height'], record['width']) == (48, 72)
  gray = cv2.cvtColor(truth, cv2.COLOR_RGB2GRAY)
  mse = np.mean((truth / 255.0 - gray[..., None] / 255.0) ** 2)
  assert record['full']['gray']['psnr'] == pytest.approx(
      10 * np.log10(1 / mse), abs=1e-3)
  tint = recombine.tint(gray, result['mean_chroma_cr_cb'])
  mse = np.mean((truth / 255.0 - tint / 255.0) ** 2)
  assert record['full']['tint']['psnr'] == pytest.approx(
      10 * np.log10(1 / mse), abs=1e-3)
  assert record['full']['tint']['colourfulness'] == pytest.approx(
      float(metrics.colourfulness(tint)))
  assert record['full']['truth']['colourfulness'] == pytest.approx(
      float(metrics.colourfulness(truth)))


def test_scores_what_colorize_writes(gan_result):
  workdir, result = gan_result
  truth = known_rgb()
  predictor = inference.load(workdir)
  (out,) = inference.colorize_photos(predictor, [truth])
  record = by_file(result, 'known.png')['full']['model']
  assert record['psnr'] == pytest.approx(metrics.psnr(truth, out), abs=1e-3)
  assert record['colourfulness'] == pytest.approx(
      float(metrics.colourfulness(out)), abs=1e-3)


def test_markdown_and_examples_are_written(gan_result):
  _, result = gan_result
  out = result['output_dir']
  with open(os.path.join(out, 'evaluation.md')) as f:
    table = f.read()
  gray_psnr = result['means']['full']['gray']['psnr']
  for row in ('| model |', '| constant tint |', '| ground truth | – | – |',
              f'| gray copy | {gray_psnr:.2f} |'):
    assert row in table, row
  assert 'PSNR 64 px' in table and '`text.jpg`' in table
  grid = cv2.imread(os.path.join(out, 'examples.png'))
  assert grid is not None
  assert grid.shape[0] == 4 * (192 + 4)  # one row per scored photo
  # A row is gray | output | truth: its first tile is gray, the last is not.
  known = grid[:196]  # rows follow the sorted file names: known.png first
  width = round(72 * 192 / 48) + 4
  first, last = known[:, :width].astype(int), known[:, 2 * width:3 * width]
  assert np.abs(first[..., 0] - first[..., 2]).max() == 0
  assert np.abs(last[..., 0].astype(int) - last[..., 2]).max() > 50


@pytest.mark.parametrize('kind', ['scgan', 'cic'])
def test_baseline_models(tmp_path_factory, tmp_path, few_photos, gan_result,
                         kind):
  workdir = helpers.untrained(kind, tmp_path_factory)
  if kind == 'cic':  # a bundle without the training chroma: no tint row
    predictor = inference.load(workdir)
    workdir = inference.write_bundle(
        dataclasses.replace(predictor, mean_chroma=None),
        str(tmp_path / 'bundle'))
  result = evaluate.run(workdir, few_photos, str(tmp_path / 'out'),
                        batch_size=2)
  assert result['model'] == kind and result['num_images'] == 2
  assert result['step'] == 0
  for scale in ('full', 'model_res'):
    assert np.isfinite(result['means'][scale]['model']['psnr'])
  # The gray copy does not depend on the model.
  assert by_file(result, 'known.png')['full']['gray'] == by_file(
      gan_result[1], 'known.png')['full']['gray']
  with open(tmp_path / 'out' / 'evaluation.md') as f:
    table = f.read()
  if kind == 'cic':
    assert result['means']['full']['tint'] is None
    assert by_file(result, 'known.png')['full']['tint'] is None
    assert '| constant tint | – | – | – |' in table
    assert any('constant tint not scored' in n for n in result['notes'])
  else:
    assert result['means']['full']['tint']['psnr'] > 0


def test_no_usable_photo_and_missing_folder_are_clear_errors(
    tmp_path_factory, tmp_path):
  workdir = helpers.untrained('scgan', tmp_path_factory)
  imagefactory.write(str(tmp_path / 'text.jpg'), b'not an image')
  with pytest.raises(ValueError, match='none of its 1 image files'):
    evaluate.run(workdir, str(tmp_path), str(tmp_path / 'out'))
  with pytest.raises(FileNotFoundError, match='--input='):
    evaluate.run(workdir, str(tmp_path / 'nope'))


def test_command_line_needs_input(tmp_path):
  result = helpers.run_main('--mode=evaluate', f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert '--input=DIR (colour photos) is required' in result.stderr
