"""One run per folder: an exclusive lock on a file in it.

Training holds <workdir>/lock; colorize, evaluate, export and prepare hold
<output>/.jaxcolor-lock. The lock is an advisory `flock` on the file, so the
kernel releases it whenever its process ends, however it ends; the file
itself holds who took it ({"pid", "host", "started"}) and is emptied (a
workdir's) or removed (an output folder's) on a clean release. A second run on the same folder is refused with a message
naming the holder; a non-empty file whose lock is free was left by a run
that was killed, and is taken over with a warning. In a multi-host run only
process 0 (the one writer) takes it.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Iterator, Optional

from absl import logging

from jaxcolor.runtime import files

WORKDIR_FILE = 'lock'        # a training workdir's
OUTPUT_FILE = '.jaxcolor-lock'  # an output folder's (hidden among results)


class FolderBusyError(ValueError):
  """Another live process holds the folder."""


class FolderLock:
  """`with FolderLock(folder):` holds the folder for this process.

  Args:
    folder: the folder (it must exist).
    file: the lock file's name in it.
    holder: what holds it, for the refusal ('training run', 'colorize run').
    flag: the flag that chose the folder, for the refusal.
    remove_on_release: remove the file on a clean release (an output
      folder holds only results afterwards); a second run that opened it
      meanwhile sees it unlinked and opens the new one.
  """

  def __init__(self, folder: str, file: str = WORKDIR_FILE,
               holder: str = 'training run', flag: str = '--workdir',
               remove_on_release: bool = False):
    self.path = os.path.join(folder, file)
    self.holder, self.flag = holder, flag
    self.remove_on_release = remove_on_release
    self._fd: Optional[int] = None
    self._claimed = False

  def __enter__(self) -> 'FolderLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _holder(self) -> dict:
    try:
      text = files.read_regular(self.path, max_bytes=4096).decode().strip()
      holder = json.loads(text) if text else {}
      return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
      return {}

  def acquire(self, claim: bool = True) -> None:
    """Takes the lock or raises FolderBusyError naming the holder.

    With `claim=False` only the kernel lock is taken (the file is not
    written: a run that may still be refused changes nothing); a later
    `acquire()` claims it, writing who holds it.
    """
    while self._fd is None:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        os.close(fd)
        who = self._holder()
        raise FolderBusyError(
            f'{os.path.dirname(self.path)} is in use by another {self.holder} '
            f'(process {who.get("pid", "?")} on {who.get("host", "?")}, '
            f'started {who.get("started", "?")}); wait for it to end, stop '
            f'it, or use another {self.flag}') from None
      if not self._still_linked(fd):  # its holder removed it as we opened
        os.close(fd)
        continue
      self._fd, self._claimed = fd, False
    if claim and not self._claimed:
      self._claim()

  def _claim(self) -> None:
    stale = self._holder()
    if stale:
      logging.warning(
          'Taking over the lock of %s: its holder (process %s on %s, started '
          '%s) ended without releasing it.', self.path, stale.get('pid'),
          stale.get('host'), stale.get('started'))
    me = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': datetime.datetime.now().astimezone().isoformat(
              timespec='seconds')}
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, json.dumps(me).encode(), 0)
    os.fsync(self._fd)
    self._claimed = True

  def _still_linked(self, fd: int) -> bool:
    try:
      return os.stat(self.path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      return False

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      if self.remove_on_release:
        os.remove(self.path)  # before unlocking: see `_still_linked`
      elif self._claimed:  # empty: released, not left by a killed run
        os.ftruncate(self._fd, 0)
    except OSError:
      pass  # the folder went read-only or away: the kernel lock still ends
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


@contextlib.contextmanager
def output_folder(folder: str, holder: str, flag: str = '--output'
                  ) -> Iterator[str]:
  """Holds an output folder for one run: checked writable (made if need
  be), locked against a second run, cleared of temporaries that a killed
  run left. Yields `folder`.

  Raises:
    files.UnwritableError: the folder cannot be written (why, in a line).
    FolderBusyError: another live run holds it.
  """
  files.check_writable(folder, flag)
  with FolderLock(folder, OUTPUT_FILE, holder, flag, remove_on_release=True):
    files.remove_stale_temporaries(folder)
    yield folder
