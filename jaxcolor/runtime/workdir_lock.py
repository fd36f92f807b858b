"""One training run per workdir: an exclusive lock on <workdir>/lock.

The lock is an advisory `flock` on the file, so the kernel releases it
whenever its process ends, however it ends; the file itself holds who took
it ({"pid", "host", "started"}) and is emptied on a clean release. A second
run on the same workdir is refused with a message naming the holder; a
non-empty file whose lock is free was left by a run that was killed, and is
taken over with a warning. In a multi-host run only process 0 (the one
writer) takes it.
"""

import datetime
import fcntl
import json
import os
import socket
from typing import Optional

from absl import logging

FILE = 'lock'


class WorkdirBusyError(ValueError):
  """Another live process holds the workdir."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for this process."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, FILE)
    self._fd: Optional[int] = None

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        text = f.read().strip()
      return json.loads(text) if text else {}
    except (OSError, ValueError):
      return {}

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirBusyError naming the holder."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      who = self._holder()
      raise WorkdirBusyError(
          f'{os.path.dirname(self.path)} is in use by another training run '
          f'(process {who.get("pid", "?")} on {who.get("host", "?")}, '
          f'started {who.get("started", "?")}); wait for it to end, stop it, '
          'or use another --workdir') from None
    stale = self._holder()
    if stale:
      logging.warning(
          'Taking over the lock of %s: its holder (process %s on %s, started '
          '%s) ended without releasing it.', self.path, stale.get('pid'),
          stale.get('host'), stale.get('started'))
    me = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': datetime.datetime.now().astimezone().isoformat(
              timespec='seconds')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # empty: released, not left by a killed run
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
