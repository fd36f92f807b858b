"""Inference: load a workdir or bundle, export, colorize photos at full size."""

import hashlib
import json
import os
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from jaxcolor.runtime import checkpoint
from jaxcolor.color import mean_chroma
from jaxcolor.color import recombine
from jaxcolor.color import ycrcb
from jaxcolor.modes import colorize
from jaxcolor.modes import export
from jaxcolor import families
from jaxcolor import inference
from jaxcolor.data import pipeline
from jaxcolor.data import preprocess
import imagefactory
import helpers
from helpers import assert_same_luminance
from helpers import has_colour
from helpers import photo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = helpers.TINY


def _fill(path, leaf, rng):
  """A value for one abstract state leaf: BatchNorm-safe random weights."""
  name = str(path[-1]) if path else ''
  if not np.issubdtype(leaf.dtype, np.floating):
    return np.zeros(leaf.shape, leaf.dtype)
  if 'var' in name or 'scale' in name:
    return np.ones(leaf.shape, leaf.dtype)
  return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)


def write_run(config, workdir, step=2):
  """A workdir whose checkpoint holds the full train state of `config`.

  The state has the exact tree that training saves (from the family's
  abstract state, traced, not run) with random weights, saved by the
  trainer's `checkpoint.save`: building it takes no compilation.
  """
  abstract = families.build(config).abstract_state()
  rng = np.random.default_rng(0)
  state = jax.tree_util.tree_map_with_path(
      lambda p, x: _fill(p, x, rng), abstract)
  manager = checkpoint.create_manager(workdir, config)
  data = iter(pipeline.build_train_dataset(config, process_index=0,
                                           process_count=1))
  checkpoint.save(manager, step, state, data, config)
  manager.wait_until_finished()
  return workdir


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """{'gan' | 'scgan' | 'cic': workdir}; the GAN's has its chroma.json."""
  root = tmp_path_factory.mktemp('runs')
  out = {name: write_run(make(), str(root / name))
         for name, make in CONFIGS.items()}
  mean_chroma.ensure_written(CONFIGS['gan'](), out['gan'])  # as training does
  return out


# ------------------------------------------------------------------ models
@pytest.mark.parametrize('name', ['gan', 'scgan', 'cic'])
def test_export_then_colorize_any_size(runs, tmp_path, name):
  p = inference.load(runs[name], batch_size=2)
  assert p.model_name == CONFIGS[name]().model.name
  assert p.image_size == 64 and p.step == 2
  bundle = export.export(runs[name], str(tmp_path / 'bundle'))
  assert sorted(os.listdir(bundle)) == [inference.BUNDLE_FILE,
                                        inference.PARAMS_FILE]
  q = inference.load(bundle, batch_size=2)
  assert q.config.to_dict() == p.config.to_dict()
  assert q.mean_chroma == p.mean_chroma and q.step == 2

  gray = np.stack([recombine.model_gray(recombine.to_gray(photo(80, 90, i)), 64)
                   for i in range(3)])
  chroma = p(gray)  # 3 photos in batches of 2: the last one padded
  assert chroma.shape == (3, 64, 64, 2) and chroma.dtype == np.float32
  assert np.all(np.isfinite(chroma))
  np.testing.assert_array_equal(q(gray), chroma)
  np.testing.assert_allclose(p(gray[2:]), chroma[2:], atol=1e-3)

  images = [photo(333, 517), recombine.to_gray(photo(517, 333, 1)),
            photo(31, 45, 2)]
  outs = inference.colorize_photos(q, images)
  for image, out in zip(images, outs):
    assert_same_luminance(out, recombine.to_gray(image))
  assert has_colour(outs[0]) > 0.5


def test_colorize_folder_mirrors_skips_and_keeps_inputs(runs, tmp_path):
  src = tmp_path / 'photos'
  good, bad = imagefactory.make_mixed_folder(str(src / 'sub'), n_good=1)
  imagefactory.write(str(src / 'odd.jpg'),
                     imagefactory.jpeg_bytes(photo(333, 517)))
  imagefactory.write(str(src / 'odd.png'),  # the same stem as odd.jpg
                     imagefactory.gray_png(photo(517, 333)))
  imagefactory.write(str(src / 'notes.txt'), b'not a photo')
  before = {p: hashlib.md5(p.read_bytes()).hexdigest()
            for p in src.rglob('*') if p.is_file() and os.access(p, os.R_OK)}
  out = tmp_path / 'out'

  counts = colorize.run(runs['gan'], str(src), str(out), batch_size=2)

  assert counts == {'written': len(good) + 2, 'skipped': len(bad), 'kept': 0}
  written = sorted(str(p.relative_to(out)) for p in out.rglob('*.png'))
  names = {'odd.jpg': 'odd.png', 'odd.png': 'odd.png.png',
           'sub/photo.BMP': 'sub/photo.png',
           'sub/photo.webp': 'sub/photo.webp.png'}  # stems shared in a folder
  for n in good:
    names.setdefault(f'sub/{n}', f'sub/{os.path.splitext(n)[0]}.png')
  assert written == sorted(names.values())
  for rel in ('odd.jpg', 'odd.png', 'sub/gray.png', 'sub/deep16.png',
              'sub/rgba.png'):
    image = preprocess.decode_image((src / rel).read_bytes())
    result = cv2.imread(str(out / names[rel]), cv2.IMREAD_COLOR)
    assert_same_luminance(cv2.cvtColor(result, cv2.COLOR_BGR2RGB),
                          recombine.to_gray(image))
  assert {p: hashlib.md5(p.read_bytes()).hexdigest()
          for p in before} == before

  # Side by side, into a folder inside the input one (left out of inputs).
  inner = src / 'colour'
  counts = colorize.run(runs['gan'], str(src / 'odd.jpg'), str(inner),
                        side_by_side_output=True, batch_size=2)
  assert counts == {'written': 1, 'skipped': 0, 'kept': 0}
  pair = cv2.imread(str(inner / 'odd.png'))
  assert pair.shape == (333, 2 * 517, 3)
  assert len(colorize.plan(str(src), str(inner))) == len(good) + len(bad) + 2
  with pytest.raises(ValueError, match='no photo written: all 1 input'):
    colorize.run(runs['gan'], str(src / 'sub' / bad[0]), str(out))


def test_never_overwrites_inputs(tmp_path):
  imagefactory.copy_samples(str(tmp_path), 1)
  name = os.listdir(tmp_path)[0]
  png = imagefactory.write(str(tmp_path / 'a.png'),
                           imagefactory.gray_png(photo(20, 30)))
  with pytest.raises(ValueError, match='is the input folder'):
    colorize.plan(str(tmp_path), str(tmp_path))
  with pytest.raises(ValueError, match='would overwrite the input'):
    colorize.plan(png, str(tmp_path))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    colorize.plan(str(tmp_path / 'nope'), str(tmp_path / 'out'))
  assert colorize.plan(str(tmp_path / name), str(tmp_path / 'out')) == [
      (str(tmp_path / name),
       str(tmp_path / 'out' / (os.path.splitext(name)[0] + '.png')))]


# ------------------------------------------------------------------ loading
def test_load_gives_clear_errors(runs, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    inference.load(str(tmp_path / 'nope'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='neither a training workdir'):
    inference.load(str(tmp_path / 'empty'))
  (tmp_path / 'fresh' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(ValueError, match='no finished checkpoint'):
    inference.load(str(tmp_path / 'fresh'))
  imagefactory.write(str(tmp_path / 'empty' / 'bundle.json'),
                     b'{"format": "something-else"}')
  with pytest.raises(ValueError, match='not a jaxcolor inference bundle'):
    inference.load(str(tmp_path / 'empty'))
  for target in (tmp_path, tmp_path / 'empty'):  # not (our) bundles
    with pytest.raises(ValueError, match='not an export bundle'):
      export.export(runs['scgan'], str(target))

  # A bundle whose config builds another model: the differing keys named.
  bundle = export.export(runs['scgan'], str(tmp_path / 'b'))
  meta_path = os.path.join(bundle, inference.BUNDLE_FILE)
  with open(meta_path) as f:
    meta = json.load(f)
  meta['config']['model']['g_features'][-1] = 32
  with open(meta_path, 'w') as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match=r'g_params/generator/\w+/kernel: '
                     r'saved \(.*\), model'):
    inference.load(bundle)


def test_mean_chroma_is_stored_with_the_model(runs, tmp_path):
  mean = mean_chroma.read(runs['gan'])
  assert mean is not None
  # The bundled photos are warm on average: Cb (blue) below neutral.
  assert mean[1] < ycrcb.NEUTRAL - 2 and abs(mean[0] - ycrcb.NEUTRAL) < 20
  assert inference.load(runs['gan']).mean_chroma == mean
  # A run without chroma.json (older code): computed from its config's data.
  old = write_run(helpers.tiny_cic(), str(tmp_path / 'old'))
  assert mean_chroma.read(old) is None
  np.testing.assert_allclose(inference.load(old).mean_chroma, mean)
  assert mean_chroma.read(old) == inference.load(old).mean_chroma


def run_main(*args):
  """Runs main.py with `args` in a subprocess; its stdout (+ TF_MODULES)."""
  check = helpers.MAIN_REPORTING_TF
  result = subprocess.run(
      [sys.executable, '-c', check, *args], cwd=ROOT, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_export_and_colorize_commands_do_not_import_tensorflow(runs,
                                                               tmp_path):
  bundle = str(tmp_path / 'bundle')
  out = run_main('--mode=export', f'--workdir={runs["scgan"]}',
                 f'--output={bundle}')
  assert 'TF_MODULES []' in out, out
  assert inference.load(bundle).model_name == 'scgan'
  photo_path = imagefactory.write(str(tmp_path / 'in.jpg'),
                                  imagefactory.jpeg_bytes(photo(45, 61)))
  out = run_main('--mode=colorize', f'--workdir={bundle}',
                 f'--input={photo_path}', f'--output={tmp_path / "out"}',
                 '--chroma_upsampling=guided')
  assert 'TF_MODULES []' in out, out
  assert '1 written, 0 skipped' in out
  assert cv2.imread(str(tmp_path / 'out' / 'in.png')).shape == (45, 61, 3)
