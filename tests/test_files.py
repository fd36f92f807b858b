"""Whole-or-nothing writes, writable targets and folder locks (runtime)."""

import errno
import json
import os
import subprocess
import sys

import pytest

from jaxcolor.runtime import files
from jaxcolor.runtime import folder_lock
import helpers


def test_a_failed_write_leaves_the_target_as_it_was(tmp_path):
  target = tmp_path / 'out.json'
  files.write_json(str(target), {'a': 1})
  with pytest.raises(ValueError):  # NaN refused mid-write
    files.write_json(str(target), {'a': float('nan')}, allow_nan=False)
  with pytest.raises(KeyboardInterrupt):  # a signal mid-write
    with files.atomic_path(str(target)) as tmp:
      with open(tmp, 'w') as f:
        f.write('{"a": 2')
      raise KeyboardInterrupt
  assert json.loads(target.read_text()) == {'a': 1}
  assert sorted(os.listdir(tmp_path)) == ['out.json']


def test_a_failed_write_names_its_file(tmp_path):
  with pytest.raises(OSError) as e:
    with files.atomic_path(str(tmp_path / 'x.png')):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert files.describe(e.value) == (f'{tmp_path / "x.png"}: No space left '
                                     'on device')
  assert files.is_target_fault(e.value)
  assert not files.is_target_fault(OSError(errno.EAGAIN, 'again'))


def test_temporaries_of_killed_runs_are_removed_not_files_of_users(tmp_path):
  sub = tmp_path / 'sub'
  sub.mkdir()
  left = [tmp_path / '.a.png.123.jaxcolor-tmp', sub / '.b.png.9.jaxcolor-tmp']
  mine = [tmp_path / 'a.png', sub / 'notes.jaxcolor-tmp', tmp_path / '.hidden']
  for p in left + mine:
    p.write_bytes(b'x')
  removed = files.remove_stale_temporaries(str(tmp_path))
  assert sorted(removed) == sorted(map(str, left))
  assert all(p.exists() for p in mine)


def test_unwritable_targets_are_one_line(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(files.UnwritableError,
                     match="--output='.*file' cannot be written: it is a "
                     'file, not a folder'):
    files.check_writable(str(tmp_path / 'file'), '--output')
  with pytest.raises(files.UnwritableError, match='Not a directory'):
    files.check_writable(str(tmp_path / 'file' / 'sub'), '--output')
  files.check_writable(str(tmp_path / 'new' / 'deep'), '--output')
  assert os.listdir(tmp_path / 'new' / 'deep') == []  # the probe is gone


def test_disk_faults_are_found_inside_wrapped_errors():
  wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": '
                       "Failed to write 16410 bytes to file 6: No space left "
                       "on device [os_error_code='28']")
  assert files.disk_fault(wrapped) == 'No space left on device'
  try:
    try:
      raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    except OSError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as e:
    assert files.disk_fault(e) == 'Read-only file system'
  assert files.disk_fault(ValueError('a bug of ours')) is None


def test_special_files_are_named_not_opened(tmp_path):
  fifo = tmp_path / 'x.jpg'
  os.mkfifo(fifo)
  assert 'named pipe' in files.not_regular_reason(str(fifo))
  with pytest.raises(ValueError, match='not a regular file'):
    files.read_regular(str(fifo))


def test_an_output_folder_holds_one_run_and_is_left_clean(tmp_path):
  out = str(tmp_path / 'out')
  with folder_lock.output_folder(out, 'colorize run'):
    lock = os.path.join(out, folder_lock.OUTPUT_FILE)
    holder = json.load(open(lock))
    assert holder['pid'] == os.getpid()
    # Another process is refused, naming this one.
    code = ('from jaxcolor.runtime import folder_lock\n'
            f'folder_lock.FolderLock({out!r}, folder_lock.OUTPUT_FILE, '
            "'colorize run', '--output').acquire()")
    other = subprocess.run([sys.executable, '-c', code], cwd=helpers.ROOT,
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 1
    assert (f'in use by another colorize run (process {os.getpid()}' in
            other.stderr and 'use another --output' in other.stderr)
  assert os.listdir(out) == []  # the lock file went with the run


def test_a_lock_removed_while_opening_is_not_held(tmp_path):
  # A run that opened the lock file just before its holder removed it
  # takes the new file instead of the removed one.
  first = folder_lock.FolderLock(str(tmp_path), folder_lock.OUTPUT_FILE,
                                 remove_on_release=True)
  first.acquire()
  fd = os.open(first.path, os.O_RDWR)
  first.release()
  second = folder_lock.FolderLock(str(tmp_path), folder_lock.OUTPUT_FILE)
  assert not second._still_linked(fd)  # pylint: disable=protected-access
  os.close(fd)
  second.acquire()
  assert second._still_linked(second._fd)  # pylint: disable=protected-access
  second.release()
