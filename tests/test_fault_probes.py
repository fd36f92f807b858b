"""Faults of the machine and of other people's files, through main.py.

Full and read-only disks, immutable and wrong-kind targets, two runs on one
output folder, signals in the middle of a write, special files among the
photos, damaged prepared records, and model files that name code. Each
probe checks the exit code, the one line that names the problem, that no
traceback reached the user, that nothing was left half-written and that
inputs and earlier outputs are unchanged (tests/probes.py).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import pytest

import helpers
import imagefactory
import probes
from probes import CIC, Probe, run_all

FULL = 'No space left on device' if probes.MOUNTS else 'File too large'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny CIC run with a checkpoint of step 2, and its export bundle."""
  root = tmp_path_factory.mktemp('faults')
  workdir, bundle = str(root / 'run'), str(root / 'bundle')
  result = helpers.run_main(*CIC, f'--workdir={workdir}',
                            '--config.num_train_steps=2', timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  result = helpers.run_main('--mode=export', f'--workdir={workdir}',
                            f'--output={bundle}')
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def _bundle(run):
  return os.path.join(os.path.dirname(run), 'bundle')


def _photos(n):
  return lambda tmp: imagefactory.copy_samples(os.path.join(tmp, 'in'), n)


def _whole_pngs_only(folder):
  """Every PNG under `folder` decodes; no temporary is left."""
  def check(tmp, out):
    del out
    root = os.path.join(tmp, folder)
    left = probes.temporaries(root)
    assert not left, left
    for d, _, names in os.walk(root):
      for n in names:
        if n.endswith('.png'):
          assert cv2.imread(os.path.join(d, n)) is not None, n
  return check


def _immutable(path):
  os.makedirs(path, exist_ok=True)
  subprocess.run(['chattr', '+i', path], check=True)


def _mutable_again(tmp_path):
  for d, _, _ in os.walk(tmp_path):
    subprocess.run(['chattr', '-i', d], capture_output=True)


CHATTR = shutil.which('chattr') is not None and probes.MOUNTS


# ------------------------------------------------------------------ disks
def test_full_and_unwritable_targets(tmp_path, run):
  colorize = ('--mode=colorize', '--workdir={run}', '--input={tmp}/in')
  bundle = _bundle(run)
  disk_probes = [
      Probe('colorize_full_disk', (*colorize, '--output={tmp}/disk/o'),
            'cannot write', disk_kb=300 if probes.MOUNTS else 60,
            setup=_photos(24), check=_whole_pngs_only('disk')),
      Probe('export_full_disk', ('--mode=export', '--workdir={run}',
                                 '--output={tmp}/disk/b'), FULL,
            disk_kb=150 if probes.MOUNTS else 100,
            check=lambda tmp, out: (
                _whole_pngs_only('disk')(tmp, out),
                _no_bundle_json(os.path.join(tmp, 'disk', 'b')))),
      Probe('output_is_a_file', (*colorize, '--output={tmp}/in/a_file'),
            'cannot be written: it is a file, not a folder',
            setup=lambda tmp: (_photos(1)(tmp), probes.write(
                os.path.join(tmp, 'in', 'a_file'), b'x'))),
      Probe('workdir_is_a_file', (*CIC, '--workdir={tmp}/file'),
            "--workdir='", setup=lambda tmp: probes.write(
                os.path.join(tmp, 'file'), b'x'),
            check=lambda tmp, out: _says(out, 'is a file, not a folder')),
  ]
  if probes.MOUNTS:
    disk_probes += [
        Probe('output_read_only', (*colorize, '--output={tmp}/disk/o'),
              'cannot be written: Read-only file system', disk_kb=64,
              disk_read_only=True, setup=_photos(1)),
        Probe('evaluate_read_only', ('--mode=evaluate', f'--workdir={bundle}',
                                     '--input={tmp}/in',
                                     '--output={tmp}/disk/e'),
              'cannot be written: Read-only file system', disk_kb=64,
              disk_read_only=True, setup=_photos(1)),
        Probe('train_full_disk', (*CIC, '--workdir={tmp}/disk/run',
                                  '--config.num_train_steps=6'),
              'No space left on device', disk_kb=1100,
              check=_resumes_when_space_returns),
    ]
  if CHATTR:
    disk_probes += [
        Probe('output_immutable', (*colorize, '--output={tmp}/imm'),
              'cannot be written: Operation not permitted', setup=lambda tmp: (
                  _photos(1)(tmp), _immutable(os.path.join(tmp, 'imm')))),
        Probe('workdir_immutable', (*CIC, '--workdir={tmp}/imm'),
              "--workdir='", setup=lambda tmp: _immutable(
                  os.path.join(tmp, 'imm')),
              check=lambda tmp, out: _says(
                  out, 'cannot be written: Operation not permitted')),
    ]
  try:
    run_all(disk_probes, tmp_path, run=run)
  finally:
    if CHATTR:
      _mutable_again(tmp_path)


def _says(out, text):
  assert text in out, out[-1500:]


def _no_bundle_json(folder):
  assert not os.path.exists(os.path.join(folder, 'bundle.json'))


def _resumes_when_space_returns(tmp, out):
  """The failed save was named as failed and the intact one as intact; a
  copy of the workdir on a roomy disk resumes from it."""
  failed = [line for line in out.splitlines() if 'could not be written' in
            line or 'Cannot write' in line]
  assert failed and 'The newest intact checkpoint is step' in failed[0], out
  intact = failed[0].split('The newest intact checkpoint is step ')[1]
  intact = intact.split()[0]
  for line in out.splitlines():  # a save is named written only when it was
    if 'Checkpoint of step' in line and '->' in line:
      assert int(line.split('Checkpoint of step ')[1].split()[0]) <= int(
          intact), line
  roomy = os.path.join(tmp, 'roomy')
  shutil.copytree(os.path.join(tmp, 'disk', 'run'), roomy)
  result = helpers.run_main(*CIC, f'--workdir={roomy}',
                            '--config.num_train_steps=6', timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'Resuming from step {intact}' in result.stderr, result.stderr[-2000:]


# ------------------------------------------------------------------ model files
def _bundle_naming(run, name):
  def setup(tmp):
    shutil.copytree(_bundle(run), os.path.join(tmp, 'b'))
    path = os.path.join(tmp, 'b', 'bundle.json')
    with open(path) as f:
      meta = json.load(f)
    meta['config']['model']['name'] = name
    with open(path, 'w') as f:
      json.dump(meta, f)
    _photos(1)(tmp)
  return setup


def _workdir_naming(run, name):
  def setup(tmp):
    shutil.copytree(run, os.path.join(tmp, 'r'))
    for path in [os.path.join(tmp, 'r', 'config.json')] + [
        os.path.join(d, 'config', 'metadata') for d in
        _step_dirs(os.path.join(tmp, 'r'))]:
      with open(path) as f:
        saved = json.load(f)
      saved['model']['name'] = name
      with open(path, 'w') as f:
        json.dump(saved, f)
    _photos(1)(tmp)
  return setup


def _step_dirs(workdir):
  ckpts = os.path.join(workdir, 'checkpoints')
  return [os.path.join(ckpts, n) for n in os.listdir(ckpts) if n.isdigit()]


def _nothing_imported(tmp, out):
  assert probes.ZEN not in out, 'the module named by the file was imported'
  assert not os.path.exists(os.path.join(tmp, 'o')), 'an output was made'


def test_model_files_never_choose_code(tmp_path, run):
  colorize = ('--mode=colorize', '--input={tmp}/in', '--output={tmp}/o')
  refused = "names the model family 'this:Zen' by import path"
  run_all([
      Probe('bundle_names_code', ('--workdir={tmp}/b', *colorize), refused,
            setup=_bundle_naming(run, 'this:Zen'), check=_nothing_imported),
      Probe('bundle_relative_name', ('--workdir={tmp}/b', *colorize),
            "names the model family '.x:Y', which is not one of",
            setup=_bundle_naming(run, '.x:Y'), check=_nothing_imported),
      Probe('bundle_names_a_list', ('--workdir={tmp}/b', *colorize),
            "names the model family ['cic'], which is not one of",
            setup=_bundle_naming(run, ['cic']), check=_nothing_imported),
      Probe('workdir_names_code', ('--workdir={tmp}/r', *colorize), refused,
            setup=_workdir_naming(run, 'this:Zen'), check=_nothing_imported),
      Probe('report_of_code', ('--mode=report', '--workdir={tmp}/r'), refused,
            setup=_workdir_naming(run, 'this:Zen'), check=_nothing_imported),
      Probe('serve_of_code', ('--mode=serve', '--workdir={tmp}/b',
                              '--port=0'), refused,
            setup=_bundle_naming(run, 'this:Zen'), check=_nothing_imported),
      Probe('init_from_code', (*CIC, '--workdir={tmp}/w',
                               '--config.init_from={tmp}/b'), refused,
            setup=_bundle_naming(run, 'this:Zen'), check=_nothing_imported),
  ], tmp_path, run=run)


# ------------------------------------------------------------------ processes
def _colorize(run, inputs, output, *flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.Popen(
      [sys.executable, os.path.join(helpers.ROOT, 'main.py'),
       '--mode=colorize', f'--workdir={run}', f'--input={inputs}',
       f'--output={output}', *flags], cwd=helpers.ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout=120):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if predicate():
      return
    time.sleep(0.05)
  raise AssertionError('timed out')


def _pngs(folder):
  return [n for n in os.listdir(folder) if n.endswith('.png')] if (
      os.path.isdir(folder)) else []


def test_one_colorize_per_output_and_sigterm_midway(tmp_path, run):
  inputs, out = str(tmp_path / 'in'), str(tmp_path / 'out')
  names = imagefactory.copy_samples(inputs, 48)
  first = _colorize(run, inputs, out)
  try:
    # Held still (SIGSTOP) while the second run tries the same folder.
    lock = os.path.join(out, '.jaxcolor-lock')
    _wait_for(lambda: os.path.exists(lock) and os.path.getsize(lock) > 0)
    os.kill(first.pid, signal.SIGSTOP)
    second = _colorize(run, inputs, out, '--overwrite')
    said = second.communicate(timeout=300)[0]
    assert second.returncode == 1, said[-2000:]
    assert (f'is in use by another colorize run (process {first.pid}' in
            said and 'Traceback' not in said), said[-2000:]
    # SIGTERM once some photos are written.
    os.kill(first.pid, signal.SIGCONT)
    _wait_for(lambda: len(_pngs(out)) >= 2)
    os.kill(first.pid, signal.SIGSTOP)
    first.send_signal(signal.SIGTERM)
    os.kill(first.pid, signal.SIGCONT)
    said = first.communicate(timeout=120)[0]
  finally:
    if first.poll() is None:
      first.kill()
  written = _pngs(out)
  assert first.returncode == 128 + signal.SIGTERM, said[-2000:]
  assert 'Traceback' not in said
  assert (f'colorize stopped by signal 15 after {len(written)} photo(s) '
          f'written to {out}') in said, said[-2000:]
  assert 0 < len(written) < len(names)
  _whole_pngs_only('out')(str(tmp_path), said)
  # The next run writes the rest and leaves the first run's files alone.
  rest = helpers.run_main('--mode=colorize', f'--workdir={run}',
                          f'--input={inputs}', f'--output={out}', timeout=300)
  assert rest.returncode == 0, rest.stderr[-2000:]
  assert (f'colorize: {len(names) - len(written)} written, 0 skipped, '
          f'{len(written)} left alone') in rest.stdout


def test_sigterm_while_a_large_png_is_written(tmp_path, run):
  inputs, out = str(tmp_path / 'in'), str(tmp_path / 'out')
  big = cv2.resize(imagefactory.sample_rgb(0), (4000, 2700),
                   interpolation=cv2.INTER_CUBIC)
  os.makedirs(inputs)
  cv2.imwrite(os.path.join(inputs, 'big.png'), big[..., ::-1])
  proc = _colorize(run, inputs, out)
  try:
    _wait_for(lambda: os.path.exists(os.path.join(out, '.jaxcolor-lock')))
    time.sleep(1.0)  # inside the decode, colorize or encode of the photo
    proc.send_signal(signal.SIGTERM)
    said = proc.communicate(timeout=120)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
  assert 'Traceback' not in said, said[-2000:]
  assert proc.returncode in (0, 128 + signal.SIGTERM), said[-2000:]
  if proc.returncode:
    assert 'colorize stopped by signal 15 after 0 photo(s)' in said
    assert not _pngs(out)
  _whole_pngs_only('out')(str(tmp_path), said)


# ------------------------------------------------------------------ special files
def _special_files(folder):
  """A FIFO and a socket named like photos beside real photos."""
  os.makedirs(folder, exist_ok=True)
  os.mkfifo(os.path.join(folder, 'pipe.jpg'))
  # Bound under a short path (AF_UNIX names are at most 108 bytes), then
  # moved beside the photos: the socket file keeps its kind.
  short = tempfile.mkdtemp(prefix='jc', dir='/tmp')
  sock = socket.socket(socket.AF_UNIX)
  sock.bind(os.path.join(short, 's'))
  sock.close()
  os.replace(os.path.join(short, 's'), os.path.join(folder, 'sock.png'))
  os.rmdir(short)


def test_special_files_among_photos_are_skipped(tmp_path, run):
  def folder(tmp):
    _photos(4)(tmp)
    _special_files(os.path.join(tmp, 'in'))

  def two_skipped(tmp, out):
    del tmp
    assert out.count('not a regular file') >= 2, out[-2000:]

  run_all([
      Probe('colorize_fifo_and_socket', (
          '--mode=colorize', '--workdir={run}', '--input={tmp}/in',
          '--output={tmp}/o'), 'colorize: 4 written, 2 skipped', rc=0,
            setup=folder, check=two_skipped),
      Probe('train_fifo_and_socket', (
          *CIC, '--workdir={tmp}/w', '--config.data.train_dir={tmp}/in',
          '--config.data.val_fraction=0', '--config.num_train_steps=2'),
            'Checkpoint of step 2', rc=0, setup=folder, check=two_skipped),
  ], tmp_path, run=run)


# ------------------------------------------------------------------ records
def _damaged_records(tmp):
  """Records prepared by main.py from 24 photos (shards of 8), then: 4 KiB
  of noise in the middle of the first shard, and one record of the second
  rewritten with a float32 NaN `rgb`."""
  import test_records  # pylint: disable=g-import-not-at-top
  _photos(24)(tmp)
  result = helpers.run_main(
      '--mode=prepare', *CIC, f'--config.data.train_dir={tmp}/in',
      f'--config.data.prepared_dir={tmp}/rec',
      '--config.data.prepare_processes=1', '--config.data.val_fraction=0',
      '--config.data.prepare_shard_size=8', timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  shards = sorted(os.path.join(tmp, 'rec', n)
                  for n in os.listdir(os.path.join(tmp, 'rec'))
                  if n.startswith('train-'))
  with open(shards[0], 'r+b') as f:
    f.seek(os.path.getsize(shards[0]) // 2)
    f.write(np.random.default_rng(0).bytes(4096))
  test_records._rewrite(shards[1], lambda i, e: (  # pylint: disable=protected-access
      test_records._nan_rgb(e) if i == 3 else e))  # pylint: disable=protected-access


def _trains_on_and_resumes(tmp, out):
  assert 'record 3 of' in out and 'does not match metadata.json' in out, (
      out[-3000:])
  with open(os.path.join(tmp, 'w', 'chroma.json')) as f:
    assert all(np.isfinite(json.load(f)['mean_chroma_cr_cb']))
  again = helpers.run_main(
      *CIC, f'--workdir={tmp}/w', f'--config.data.prepared_dir={tmp}/rec',
      '--config.data.val_fraction=0', '--config.num_train_steps=8',
      timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'Resuming from step 4' in again.stderr and (
      'Traceback' not in again.stderr), again.stderr[-2000:]


def test_damaged_records_are_skipped_and_counted(tmp_path):
  run_all([
      Probe('train_on_damaged_records', (
          *CIC, '--workdir={tmp}/w', '--config.data.prepared_dir={tmp}/rec',
          '--config.data.val_fraction=0', '--config.num_train_steps=4'),
            'damaged record', rc=0, setup=_damaged_records,
            check=_trains_on_and_resumes),
  ], tmp_path)
