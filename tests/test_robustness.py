"""The bad-input and fault probe matrix, through main.py as users run it.

Every probe runs main.py (or the weight converter) in a fresh process and
checks the exit code, that the output says what is wrong in a line that
names the problem (and holds no Python traceback), and that no input or
earlier output changed (file hashes). Probes run three at a time
(tests/probes.py); the faults of disks, special files, damaged records and
model files are probed in test_fault_probes.py.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest

import helpers
import imagefactory
import probes
from probes import CIC, Probe, run_all, write as _write

TINY = ('--config=configs/tiny.py', '--config.data.batch_size=4',
        '--config.data.eval_batch_size=4')


def _broken_folder(tmp):
  _write(os.path.join(tmp, 'in', 'z.jpg'), b'')
  _write(os.path.join(tmp, 'in', 't.jpg'), b'x\n')
  _write(os.path.join(tmp, 'in', 'u.jpg'), b'not a jpeg ' * 50)


def _mixed_folder(tmp):
  folder = os.path.join(tmp, 'in')
  os.makedirs(folder)
  imagefactory.make_mixed_folder(folder)
  rgb = imagefactory.sample_rgb(1)
  _write(os.path.join(folder, 'with space é.jpg'), imagefactory.jpeg_bytes(rgb))
  _write(os.path.join(folder, 'bomb.png'), imagefactory.header_only_png(
      20000, 20000))
  _write(os.path.join(folder, 'one.png'), imagefactory.png_bytes(rgb[:1, :1]))
  os.symlink('loop', os.path.join(folder, 'loop'))  # a symlink loop


def _empty_folder(tmp):
  os.makedirs(os.path.join(tmp, 'in'))


def _photos(tmp, n=2):
  imagefactory.copy_samples(os.path.join(tmp, 'in'), n)


def _user_png_beside(tmp):
  """in/a.jpg and the user's own in/a.png, which colorize would write."""
  rgb = imagefactory.sample_rgb(0)
  _write(os.path.join(tmp, 'in', 'a.jpg'), imagefactory.jpeg_bytes(rgb))
  _write(os.path.join(tmp, 'in', 'a.png'), imagefactory.png_bytes(
      imagefactory.sample_rgb(1)))


def _copy_run(run):
  def setup(tmp):
    shutil.copytree(run, os.path.join(tmp, 'run'))
  return setup


def _largest_file(root):
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def _damage(run, how):
  def setup(tmp):
    shutil.copytree(run, os.path.join(tmp, 'run'))
    step4 = os.path.join(tmp, 'run', 'checkpoints', '4')
    if how == 'truncate':
      path = _largest_file(os.path.join(step4, 'state'))
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 3)
    elif how == 'garble':  # same size, the middle half rewritten
      path = _largest_file(os.path.join(step4, 'state'))
      size = os.path.getsize(path)
      with open(path, 'r+b') as f:
        f.seek(size // 4)
        f.write(bytes((7 * i + 13) % 256 for i in range(size // 4)))
    elif how == 'metadata':
      os.remove(os.path.join(step4, 'state', '_METADATA'))
    elif how == 'config':
      shutil.rmtree(os.path.join(step4, 'config'))
    elif how == 'all':
      for step in ('2', '4'):
        os.remove(os.path.join(tmp, 'run', 'checkpoints', step, 'state',
                               '_METADATA'))
    elif how == 'killed_save':
      shutil.copytree(step4, os.path.join(
          tmp, 'run', 'checkpoints', '6.orbax-checkpoint-tmp-123'))
  return setup


def _set_aside(step, cause=''):
  """Checks the step was set aside, named once, with its `cause` if given,
  and that nothing but jaxcolor's log lines reached the console."""
  def check(tmp, out):
    assert os.path.isdir(os.path.join(tmp, 'run', 'checkpoints_damaged',
                                      step)), 'damaged step not set aside'
    named = [line for line in out.splitlines() if 'is damaged' in line]
    assert len(named) == 1 and cause in named[0], named
    assert not [line for line in out.splitlines() if line[:1] not in 'IWE'
                or ' base_events.py:' in line], out[-2000:]
  return check


def _no_tmp_left(tmp, out):
  del out
  left = os.listdir(os.path.join(tmp, 'run', 'checkpoints'))
  assert not [n for n in left if 'tmp' in n], left


def _trained_skipping(tmp, out):
  assert os.path.isdir(os.path.join(tmp, 'w', 'checkpoints', '2')), 'no ckpt'
  for reason in ('empty file', 'too large', 'truncated'):
    assert reason in out, f'no skip for {reason!r}'


def _nothing_changed(run):
  """The refused run wrote, moved and took over nothing: its copy of `run`
  holds the same files, byte for byte (config.json, chroma.json, lock)."""
  def check(tmp, out):
    del out
    assert probes.hashes(os.path.join(tmp, 'run')) == probes.hashes(run)
  return check


def _user_file_kept(tmp, out):
  del out
  with open(os.path.join(tmp, 'in', 'a.png'), 'rb') as f:
    assert f.read() == imagefactory.png_bytes(imagefactory.sample_rgb(1))


# ------------------------------------------------------------------ probes
def test_command_line_and_config_probes(tmp_path):
  four = {'XLA_FLAGS': helpers.xla_flags(4)}
  run_all([
      Probe('unknown_mode', (*TINY, '--mode=nope'),
            'flag --mode=nope: value should be one of'),
      Probe('no_workdir', TINY, '--workdir is required for --mode=train'),
      Probe('missing_config', ('--config=nope.py', '--workdir={tmp}/w'),
            '--config=nope.py cannot be loaded: [Errno 2] No such file'),
      Probe('bad_config_variant', ('--config=configs/recipe.py:100',
                                   '--workdir={tmp}/w'),
            '--config cannot be loaded: ValueError: --config=configs/'
            'recipe.py:100: the variants are the image sizes'),
      Probe('unknown_key', (*TINY, '--workdir={tmp}/w',
                            '--config.data.batchsize=3'),
            "unknown config key on the command line: 'batchsize'"),
      Probe('bad_value', (*TINY, '--workdir={tmp}/w',
                          '--config.data.batch_size=abc'),
            'data.batch_size'),
      Probe('eval_batch_zero', (*TINY, '--workdir={tmp}/w',
                                '--config.data.eval_batch_size=0'),
            'config.data.eval_batch_size=0: the global evaluation batch '
            'must be an integer >= 1'),
      Probe('batch_negative', (*TINY, '--workdir={tmp}/w',
                               '--config.data.batch_size=-2'),
            'config.data.batch_size=-2'),
      Probe('batch_not_divisible', (*TINY, '--workdir={tmp}/w',
                                    '--config.data.batch_size=3'),
            'must split evenly over 1 process(es) x 4 local device(s)',
            env=four),
      Probe('log_every_zero', (*TINY, '--workdir={tmp}/w',
                               '--config.log_every_steps=0'),
            'config.log_every_steps=0'),
      Probe('steps_zero', (*TINY, '--workdir={tmp}/w',
                           '--config.num_train_steps=0'),
            'config.num_train_steps=0: training steps (-1: from num_epochs) '
            'must be -1 or an integer >= 1'),
      Probe('val_fraction', (*TINY, '--workdir={tmp}/w',
                             '--config.data.val_fraction=1.5'),
            'config.data.val_fraction=1.5 must be in [0, 1)'),
      Probe('steps_per_call_zero', (*TINY, '--workdir={tmp}/w',
                                    '--config.steps_per_call=0'),
            'config.steps_per_call=0'),
      Probe('bad_dtype', (*TINY, '--workdir={tmp}/w',
                          '--config.dtype=float16'),
            "config.dtype='float16'; expected one of"),
      Probe('unknown_model', (*TINY, '--workdir={tmp}/w',
                              '--config.model.name=nope'),
            "config.model.name='nope'; expected one of"),
      Probe('benchmark_bad_what', (*TINY, '--mode=benchmark',
                                   '--config.benchmark.what=nope'),
            "config.benchmark.what='nope'"),
      Probe('evaluate_no_input', ('--mode=evaluate', '--workdir={tmp}'),
            '--input=DIR (colour photos) is required'),
  ], tmp_path)


def test_data_probes(tmp_path):
  run_all([
      Probe('missing_train_dir', (*TINY, '--workdir={tmp}/w',
                                  '--config.data.train_dir={tmp}/nope'),
            'is not an existing folder'),
      Probe('empty_train_dir', (*TINY, '--workdir={tmp}/w',
                                '--config.data.train_dir={tmp}/in'),
            'holds no image files', setup=_empty_folder),
      Probe('all_broken', (*TINY, '--workdir={tmp}/w',
                           '--config.data.train_dir={tmp}/in',
                           '--config.data.val_fraction=0'),
            'no usable train image among the 3 file(s) of the train split '
            '(2 not a decodable image, 1 empty file)', setup=_broken_folder),
      Probe('mixed_folder_trains', (*CIC, '--workdir={tmp}/w',
                                    '--config.data.train_dir={tmp}/in',
                                    '--config.num_train_steps=2'),
            'Skipping', rc=0, setup=_mixed_folder, check=_trained_skipping),
      Probe('prepare_twice', ('--mode=prepare', *TINY,
                              '--config.data.train_dir={tmp}/in',
                              '--config.data.prepared_dir={tmp}/records'),
            'is not empty; choose a new folder',
            setup=lambda tmp: (_photos(tmp, 4), subprocess.run(
                [sys.executable, 'main.py', '--mode=prepare', *TINY,
                 f'--config.data.train_dir={tmp}/in',
                 f'--config.data.prepared_dir={tmp}/records',
                 '--config.data.prepare_processes=1'], cwd=helpers.ROOT,
                capture_output=True, check=True))),
      Probe('records_without_metadata', (*TINY, '--workdir={tmp}/w',
                                         '--config.data.prepared_dir={tmp}'),
            'has no metadata.json'),
  ], tmp_path)


_CONSOLE = {}


@pytest.fixture(scope='module')
def cic_run(tmp_path_factory):
  """A tiny CIC run with checkpoints 2 and 4 (trained through main.py)."""
  run = str(tmp_path_factory.mktemp('cic') / 'run')
  result = helpers.run_main(*CIC, f'--workdir={run}',
                            '--config.num_train_steps=4', timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  _CONSOLE['train'] = result.stdout + result.stderr
  return run


def test_the_console_of_a_run_is_readable(cic_run):
  lines = _CONSOLE['train'].splitlines()
  assert max(len(line) for line in lines) <= 300
  ours = {'main.py'} | {  # the file names of every jaxcolor module
      n for _, _, files in os.walk(os.path.join(helpers.ROOT, 'jaxcolor'))
      for n in files if n.endswith('.py')}
  third_party_info = [
      line for line in lines if line.startswith('I') and '] ' in line and
      line.split('] ')[0].split()[-1].split(':')[0] not in ours]
  assert not third_party_info, third_party_info[:5]
  text = '\n'.join(lines)
  for expected in ('Model cic; data: ', 'Fresh start: steps 1..4',
                   'step 2/4', 'eval step 2: PSNR', 'Checkpoint of step 4'):
    assert expected in text, expected
  with open(os.path.join(cic_run, 'config.json')) as f:
    assert json.load(f)['model']['name'] == 'cic'


def test_benchmark_of_the_paper_config_needs_no_weights(tmp_path):
  out = str(tmp_path / 'bench.json')
  result = helpers.run_main(
      '--mode=benchmark', '--config=configs/default.py',
      '--config.model.g_features=(8,8,16,16,16,16,16)',
      '--config.model.d_features=(8,8,16,16,16,1)',
      '--config.model.resnet_input_size=32', '--config.model.conv_impl=xla',
      '--config.data.batch_size=4', '--config.benchmark.num_steps=1',
      '--config.benchmark.warmup_steps=0',
      f'--config.benchmark.output_json={out}', timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  note = 'no ResNet-18 weights given: measured with a randomly initialised'
  assert note in result.stdout
  with open(out) as f:
    assert any(note in n for n in json.load(f)['notes'])


def test_only_the_reports_of_a_damaged_reads_leftovers_are_dropped():
  # Which of these a damaged checkpoint produces varies run to run (see
  # checkpoint.py); the probes below meet them at random, this pins each.
  from jaxcolor.runtime import checkpoint  # pylint: disable=g-import-not-at-top
  read = ('Error reading "params.conv.kernel/0.0.0.0" in OCDBT database at '
          'local file "run/checkpoints/4/state/": Requested byte range')
  logs = checkpoint._OrphanedReadLogs()
  record = lambda msg: logging.LogRecord('asyncio', logging.ERROR, '', 0, msg,
                                         None, None)
  assert not logs.filter(record(
      f'Future exception was never retrieved\nfuture: <Future ({read})>'))
  assert not logs.filter(record(
      'Task exception was never retrieved\nfuture: <Task coro=<async_'
      'deserialize()> exception=Exception("Encountered error while reading '
      'array index: (slice(0, 3, 1),)")>'))
  assert logs.filter(record('Task exception was never retrieved\nfuture: '
                            '<Task exception=ValueError("a bug of ours")>'))
  assert logs.filter(record(f'{read} (not an orphaned future)'))
  seen = []
  hook = checkpoint._OrphanedReadHook(seen.append)
  unraisable = lambda error, obj: types.SimpleNamespace(
      exc_type=type(error), exc_value=error, exc_traceback=None, object=obj,
      err_msg=None)
  hook(unraisable(ValueError(read), 'coroutine'))
  hook(unraisable(RuntimeError('Event loop is closed'), None))
  kept = [unraisable(RuntimeError('Event loop is closed'), 'a coroutine'),
          unraisable(ValueError('a bug of ours'), None)]
  for u in kept:
    hook(u)
  assert seen == kept


def test_checkpoint_probes(tmp_path, cic_run):
  resume = (*CIC, '--workdir={tmp}/run', '--config.num_train_steps=2')
  run_all([
      Probe('truncated_state', resume, 'Checkpoint of step 4 is damaged',
            rc=0, setup=_damage(cic_run, 'truncate'),
            check=_set_aside('4', cause='is not valid for value of size')),
      Probe('garbled_state', resume, 'Checkpoint of step 4 is damaged',
            rc=0, setup=_damage(cic_run, 'garble'), check=_set_aside('4')),
      Probe('no_state_metadata', resume,
            'checkpoints/4/state/_METADATA is missing', rc=0,
            setup=_damage(cic_run, 'metadata'), check=_set_aside('4')),
      Probe('no_config', resume, 'checkpoints/4/config/metadata is missing',
            rc=0, setup=_damage(cic_run, 'config'), check=_set_aside('4')),
      Probe('all_damaged', resume, 'None of the 2 checkpoint(s)',
            setup=_damage(cic_run, 'all')),
      Probe('killed_save_cleaned', resume,
            'Removed 1 interrupted checkpoint save(s)', rc=0,
            setup=_damage(cic_run, 'killed_save'), check=_no_tmp_left),
      Probe('other_model_config', (*resume, '--config.model.temperature=0.5'),
            'cannot be resumed with this config', setup=_copy_run(cic_run),
            check=_nothing_changed(cic_run)),
      Probe('other_batch_size', (*resume, '--config.data.batch_size=8'),
            'data.batch_size: checkpoint has 4, config has 8',
            setup=_copy_run(cic_run), check=_nothing_changed(cic_run)),
      Probe('colorize_damaged_newest', (
          '--mode=colorize', '--workdir={tmp}/run', '--input={tmp}/in',
          '--output={tmp}/out'), 'Skipping a damaged checkpoint', rc=0,
            setup=lambda tmp: (_damage(cic_run, 'metadata')(tmp), _photos(tmp))),
      Probe('colorize_missing_step', (
          '--mode=colorize', '--workdir={tmp}/run', '--input={tmp}/in',
          '--output={tmp}/out', '--step=3'), 'has no checkpoint of step 3',
            setup=lambda tmp: (_copy_run(cic_run)(tmp), _photos(tmp))),
      Probe('export_step', ('--mode=export', '--workdir={tmp}/run',
                            '--output={tmp}/bundle', '--step=2'),
            'step 2', rc=0, setup=_copy_run(cic_run)),
      Probe('corrupt_chroma', ('--mode=colorize', '--workdir={tmp}/run',
                               '--input={tmp}/in', '--output={tmp}/out'),
            'chroma.json is damaged', setup=lambda tmp: (
                _copy_run(cic_run)(tmp), _photos(tmp),
                _write(os.path.join(tmp, 'run', 'chroma.json'), b'{"mean'))),
      Probe('overwrite_refused', ('--mode=colorize', '--workdir={tmp}/run',
                                  '--input={tmp}/in/a.jpg', '--output={tmp}/in'),
            '1 left alone', rc=0, setup=lambda tmp: (
                _copy_run(cic_run)(tmp), _user_png_beside(tmp)),
            check=_user_file_kept),
      Probe('input_is_output', ('--mode=colorize', '--workdir={tmp}/run',
                                '--input={tmp}/in', '--output={tmp}/in'),
            'is the input folder', setup=lambda tmp: (
                _copy_run(cic_run)(tmp), _photos(tmp))),
      Probe('colorize_only_broken', ('--mode=colorize', '--workdir={tmp}/run',
                                     '--input={tmp}/in', '--output={tmp}/out'),
            'no photo written', setup=lambda tmp: (
                _copy_run(cic_run)(tmp), _broken_folder(tmp))),
  ], tmp_path, run=cic_run)


def test_overwrite_replaces_only_when_asked(tmp_path, cic_run):
  _user_png_beside(str(tmp_path))
  args = ('--mode=colorize', f'--workdir={cic_run}',
          f'--input={tmp_path}/in/a.jpg', f'--output={tmp_path}/in')
  result = helpers.run_main(*args, '--overwrite')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'colorize: 1 written' in result.stdout
  with open(tmp_path / 'in' / 'a.png', 'rb') as f:
    assert f.read() != imagefactory.png_bytes(imagefactory.sample_rgb(1))


def test_inference_and_converter_probes(tmp_path, cic_run):
  def bundle(damage):
    def setup(tmp):
      result = helpers.run_main('--mode=export', f'--workdir={cic_run}',
                                f'--output={tmp}/bundle')
      assert result.returncode == 0, result.stderr
      damage(os.path.join(tmp, 'bundle'))
      _photos(tmp)
    return setup

  def truncate_params(b):
    path = os.path.join(b, 'params.msgpack')
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)

  colorize_bundle = ('--mode=colorize', '--workdir={tmp}/bundle',
                     '--input={tmp}/in', '--output={tmp}/out')
  run_all([
      Probe('colorize_missing_workdir', (
          '--mode=colorize', '--workdir={tmp}/nope', '--input={tmp}/in',
          '--output={tmp}/o'), 'does not exist', setup=_photos),
      Probe('evaluate_missing_workdir', (
          '--mode=evaluate', '--workdir={tmp}/nope', '--input={tmp}/in'),
            'does not exist', setup=_photos),
      Probe('export_missing_workdir', ('--mode=export', '--workdir={tmp}/nope',
                                       '--output={tmp}/b'), 'does not exist'),
      Probe('colorize_missing_input', ('--mode=colorize', f'--workdir={cic_run}',
                                       '--input={tmp}/nope', '--output={tmp}/o'),
            "--input='" ),
      Probe('report_missing_workdir', ('--mode=report', '--workdir={tmp}/nope'),
            'is not an existing folder'),
      Probe('report_no_events', ('--mode=report', '--workdir={tmp}'),
            'holds no TensorBoard event files'),
      Probe('truncated_bundle', colorize_bundle,
            'params.msgpack is damaged', setup=bundle(truncate_params)),
      Probe('garbage_bundle_json', colorize_bundle, 'bundle.json is not JSON',
            setup=bundle(lambda b: _write(os.path.join(b, 'bundle.json'),
                                          b'\xff\xfe garbage'))),
      Probe('converter_missing', ('--src={tmp}/nope.pth', '--out={tmp}/o'),
            'no such weight file', rc=1, converter=True),
      Probe('converter_text_safetensors', (
          '--src={tmp}/in/w.safetensors', '--out={tmp}/o'),
            'is not a readable .safetensors file', rc=1, converter=True,
            setup=lambda tmp: _write(os.path.join(tmp, 'in', 'w.safetensors'),
                                     b'just some text\n')),
      Probe('converter_unknown_type', ('--src={tmp}/in/w.txt', '--out={tmp}/o'),
            "unknown weight file type '.txt'", rc=1, converter=True,
            setup=lambda tmp: _write(os.path.join(tmp, 'in', 'w.txt'), b'x')),
  ], tmp_path)


# ------------------------------------------------------------------ processes
def _start(workdir, *flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  log = open(workdir + '.log', 'wb')
  return subprocess.Popen(
      [sys.executable, os.path.join(helpers.ROOT, 'main.py'), *CIC,
       f'--workdir={workdir}', *flags], cwd=helpers.ROOT, env=env,
      stdout=log, stderr=subprocess.STDOUT)


def _wait_for(predicate, timeout=120):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if predicate():
      return
    time.sleep(0.1)
  raise AssertionError('timed out')


def test_one_run_per_workdir_and_prompt_sigterm(tmp_path):
  workdir = str(tmp_path / 'run')
  lock = os.path.join(workdir, 'lock')
  first = _start(workdir, '--config.num_train_steps=2000')
  try:
    _wait_for(lambda: os.path.exists(lock) and os.path.getsize(lock) > 0)
    holder = json.load(open(lock))
    assert holder['pid'] == first.pid
    second = helpers.run_main(*CIC, f'--workdir={workdir}',
                              '--config.num_train_steps=2')
    assert second.returncode == 1
    assert (f'is in use by another training run (process {first.pid}' in
            second.stderr), second.stderr
    assert 'Traceback' not in second.stderr
    # SIGTERM wherever the first run is (set-up, a step, data, evaluation):
    # it ends within seconds and releases the lock.
    time.sleep(3)
    t0 = time.time()
    first.send_signal(signal.SIGTERM)
    rc = first.wait(timeout=60)
    assert time.time() - t0 < 45
    log = open(workdir + '.log').read()
    assert rc in (0, 128 + signal.SIGTERM), log[-2000:]
    assert 'Traceback' not in log and 'leaked shared_memory' not in log
    assert os.path.getsize(lock) == 0
  finally:
    if first.poll() is None:
      first.kill()
  # A lock left by a killed run is taken over.
  with open(lock, 'w') as f:
    json.dump({'pid': 999999, 'host': 'elsewhere', 'started': 'earlier'}, f)
  result = helpers.run_main(*CIC, f'--workdir={workdir}',
                            '--config.num_train_steps=2', timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert ('Taking over the lock' in result.stderr and
          'process 999999 on elsewhere' in result.stderr)


def test_an_intact_restore_leaves_pythons_error_hooks_alone():
  # The drop above is installed only after a failed read: a process that
  # restores intact checkpoints still reports every unraisable error,
  # 'Event loop is closed' too.
  step_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'fixtures', 'legacy', 'scgan', 'run', 'checkpoints',
                          '2')
  code = f'''
import sys
from jaxcolor.runtime import checkpoint
checkpoint.restore_fields({step_dir!r}, ['g_params'])
assert sys.unraisablehook is sys.__unraisablehook__, sys.unraisablehook

class Leaky:
  def __del__(self):
    raise RuntimeError('Event loop is closed')

Leaky()
print('restored', flush=True)
'''
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', code], cwd=root,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'restored' in result.stdout
  assert 'Event loop is closed' in result.stderr
