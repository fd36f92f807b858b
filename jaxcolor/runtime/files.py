"""Files the product writes appear whole or not at all; targets are checked
before the work; inputs are read only when they are regular files.

Writes go to a temporary file in the target's folder (`.<name>.<pid>` +
`TEMP_SUFFIX`) that is renamed over the target once complete: a failed or
interrupted write removes its temporary, and a temporary left by a killed
process is removed (with a warning) by the next run that holds the folder.
"""

import contextlib
import errno
import json
import os
import stat
from typing import Any, Iterator, Optional

from absl import logging

TEMP_SUFFIX = '.jaxcolor-tmp'
# The most a JSON file this product reads (saved configs, bundle.json) may
# hold; a larger one is no file of ours.
JSON_LIMIT = 64 * 2**20

# OS errors of the target rather than of the program: a full or read-only
# disk, a missing permission, a path that is a file. main.py reports them
# in one line; any other OSError keeps its traceback.
TARGET_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
    errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
    errno.EIO, errno.ENAMETOOLONG, errno.ELOOP, errno.EBUSY, errno.ETXTBSY})


def is_target_fault(e: BaseException) -> bool:
  """True for an OSError of the file system (full, read-only, no access)."""
  return isinstance(e, OSError) and e.errno in TARGET_ERRNOS


# Faults of the disk itself: full, over quota, read-only, failing.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
                errno.EIO)


def disk_fault(e: BaseException) -> Optional[str]:
  """'No space left on device' (the OS's words) when `e`, or an error it
  wraps, is a fault of the disk; None otherwise. Libraries that write
  asynchronously (Orbax, TensorStore, TensorFlow's event writer) wrap the
  OS error in their own types and text, so the text is read too."""
  seen = e
  for _ in range(20):  # the chain of causes (bounded: it may loop)
    if seen is None:
      return None
    if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
      return os.strerror(seen.errno)
    text = str(seen)
    for code in _DISK_ERRNOS:
      if os.strerror(code) in text or f"os_error_code='{code}'" in text:
        return os.strerror(code)
    seen = seen.__cause__ or seen.__context__
  return None


def describe(e: OSError, path: Optional[str] = None) -> str:
  """'PATH: No space left on device' for an OSError."""
  where = path or e.filename or '?'
  reason = e.strerror or str(e)
  return f'{where}: {reason}'


def temp_path(path: str) -> str:
  """The temporary that `path` is written through (same folder)."""
  folder, name = os.path.split(path)
  return os.path.join(folder, f'.{name}.{os.getpid()}{TEMP_SUFFIX}')


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """`with atomic_path(p) as tmp:` write `tmp`; it becomes `p` on success.

  On any exception (a full disk, a signal) the temporary is removed and
  `p` is left as it was.
  """
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  tmp = temp_path(path)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and not e.filename:
      e.filename = path  # a failed write() names no file
    raise


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically (flushed to the disk first)."""
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def write_json(path: str, obj: Any, **kwargs) -> None:
  """json.dumps(obj, **kwargs) to `path`, atomically."""
  write_text(path, json.dumps(obj, **kwargs))


def remove_stale_temporaries(folder: str, recursive: bool = True,
                             skip_dirs: tuple[str, ...] = ()) -> list[str]:
  """Removes temporaries left in `folder` by killed runs; returns them.

  Call it only while holding the folder's lock (`FolderLock`): no live run
  of this product is writing there then.
  """
  removed = []
  if not os.path.isdir(folder):
    return removed
  for root, dirs, names in os.walk(folder):
    dirs[:] = [d for d in dirs if d not in skip_dirs] if recursive else []
    for name in names:
      if name.startswith('.') and name.endswith(TEMP_SUFFIX):
        path = os.path.join(root, name)
        with contextlib.suppress(OSError):
          os.remove(path)
          removed.append(path)
  if removed:
    logging.warning('Removed %d unfinished file(s) left in %s by an '
                    'interrupted run: %s', len(removed), folder,
                    ', '.join(os.path.relpath(p, folder) for p in removed[:5])
                    + (f' and {len(removed) - 5} more' if len(removed) > 5
                       else ''))
  return removed


class UnwritableError(ValueError):
  """A target folder that cannot be written (one line: path and reason)."""


def check_writable(folder: str, flag: Optional[str] = None,
                   probe_bytes: int = 65536) -> None:
  """Makes `folder` if needed and writes and removes a probe file in it.

  Raises:
    UnwritableError: '`flag`=FOLDER cannot be written: REASON' (a file, a
      read-only or full disk, no permission).
  """
  def fail(reason: str):
    name = f'{flag}={folder!r}' if flag else repr(folder)
    raise UnwritableError(f'{name} cannot be written: {reason}')

  if os.path.lexists(folder) and not os.path.isdir(folder):
    fail('it is a file, not a folder')
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    fail(f'{e.strerror or e}' + (f' ({e.filename})' if e.filename and
                                 e.filename != folder else ''))
  probe = os.path.join(folder, f'.probe.{os.getpid()}{TEMP_SUFFIX}')
  try:
    with open(probe, 'wb') as f:
      f.write(b'\0' * probe_bytes)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    fail(e.strerror or str(e))
  finally:
    with contextlib.suppress(OSError):
      os.remove(probe)


# ------------------------------------------------------------------ reading
def _size_text(n: int) -> str:
  """'512 MiB', '3.2 MiB' or '900 bytes'."""
  if n % 2**20 == 0 and n:
    return f'{n // 2**20} MiB'
  return f'{n / 2**20:.1f} MiB' if n >= 2**20 else f'{n} bytes'


def not_regular_reason(path: str, max_bytes: Optional[int] = None,
                       limit_name: str = 'config.data.max_file_bytes'
                       ) -> Optional[str]:
  """Why `path` must not be opened, or None for a regular file in bounds.

  A FIFO, socket or device (or a symlink to one) would block or never end
  if opened; it is named from its `stat`, never opened. Reasons start with
  a short kind for counting: 'not a regular file (a named pipe)',
  'unreadable (No such file or directory)', 'file too large (...)'.
  """
  try:
    st = os.stat(path)
  except OSError as e:
    return f'unreadable ({e.strerror or e})'
  mode = st.st_mode
  if not stat.S_ISREG(mode):
    kind = ('a named pipe' if stat.S_ISFIFO(mode) else
            'a socket' if stat.S_ISSOCK(mode) else
            'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            'a folder' if stat.S_ISDIR(mode) else 'an odd file type')
    return f'not a regular file ({kind})'
  if max_bytes is not None and st.st_size > max_bytes:
    return (f'file too large ({_size_text(st.st_size)} > {limit_name}='
            f'{_size_text(max_bytes)})')
  return None


def read_regular(path: str, max_bytes: Optional[int] = None,
                 limit_name: str = 'config.data.max_file_bytes') -> bytes:
  """The bytes of a regular file of at most `max_bytes` (None: no limit).

  Checked with `not_regular_reason` first; the file is then opened without
  blocking and checked again through its descriptor, so a FIFO swapped in
  after the check cannot hang the read, and a file that grows meanwhile is
  read no further than the limit.

  Raises:
    ValueError: not a regular file, or too large (the reason, as
      `not_regular_reason` words it).
    OSError: the open or the read failed.
  """
  reason = not_regular_reason(path, max_bytes, limit_name)
  if reason:
    raise ValueError(reason)
  flags = os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(
      os, 'O_NOCTTY', 0)
  fd = os.open(path, flags)
  with os.fdopen(fd, 'rb') as f:
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
      raise ValueError('not a regular file (replaced while being read)')
    data = f.read(max_bytes + 1 if max_bytes is not None else -1)
  if max_bytes is not None and len(data) > max_bytes:
    raise ValueError(f'file too large (over {limit_name}='
                     f'{_size_text(max_bytes)})')
  return data
