"""main.py's command line: bad flags, keys, paths and configs give one clear line."""


import pytest

from helpers import run_main


@pytest.mark.parametrize('args,expected', [
    (('--config=configs/tiny.py', '--workdir=W', '--config.data.batchsize=3'),
     'unknown config key on the command line: \'batchsize\' Did you mean '
     '"batch_size"'),
    (('--config=configs/tiny.py', '--mode=nope'),
     'flag --mode=nope: value should be one of'),
    (('--config=configs/tiny.py',), '--workdir is required for --mode=train'),
    (('--config=configs/tiny.py', '--workdir=W',
      '--config.data.train_dir=/no/such/folder'),
     "FileNotFoundError: config.data.train_dir='/no/such/folder' is not an "
     'existing folder'),
    (('--config=configs/default.py', '--workdir=W',
      '--config.data.train_dir=jaxcolor/data/samples'),
     'needs ImageNet weights'),
])
def test_bad_command_lines_fail_with_one_clear_message(tmp_path, args, expected):
  args = [a.replace('=W', f'={tmp_path}') for a in args]
  result = run_main(*args)
  assert result.returncode != 0
  assert expected in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
