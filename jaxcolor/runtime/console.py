"""What a person sees on the console: jaxcolor's own lines.

Libraries that log through absl (Orbax, Grain, clu's logging writer, JAX)
print INFO lines of their own, around every checkpoint and log step; by
default only their warnings and errors are shown, and jaxcolor's INFO lines
(set-up, a progress line per log step, evaluations, checkpoints). With
`--verbosity=1` (or more) every line is shown.
"""

import contextlib
import logging
import os
from typing import Iterator

from jaxcolor.runtime import files

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# jaxcolor/ (every module of the package) and the repository's main.py.
_OURS = (_PACKAGE + os.sep,
         os.path.join(os.path.dirname(_PACKAGE), 'main.py'))


class _OwnInfoOnly(logging.Filter):
  """Keeps WARNING and above, and INFO lines logged by jaxcolor itself."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return _is_ours(record)


def quiet_libraries(verbosity: int) -> None:
  """Hides other libraries' INFO lines unless `verbosity` >= 1."""
  if verbosity >= 1:
    return
  # TensorFlow (imported by clu's writers, for TensorBoard files only)
  # prints C++ lines of its own, which absl's filter never sees: INFO as it
  # loads (on Intel CPUs a notice that its oneDNN ops round differently),
  # WARNINGs when an event file cannot be flushed (a full disk, which the
  # run reports itself). jaxcolor runs no TensorFlow op but the event
  # writer's, so those ops are turned off and only TF's errors shown.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
    handler.addFilter(_OwnInfoOnly())


class _DiskFaultReports(logging.Filter):
  """Drops other libraries' error reports of a write that a full or
  read-only disk made fail (Orbax's save threads, clu's TensorBoard writer
  thread: a traceback each): the run reports the fault once, in its own
  line."""

  _SAVE_THREADS = ('orbax-checkpoint-tmp', 'Handler Commit', 'Save Finalize',
                   '_SignalingThread.run() raised')

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or _is_ours(record):
      return True
    if record.exc_info and record.exc_info[1] is not None and (
        files.disk_fault(record.exc_info[1])):
      return False
    try:
      message = record.getMessage()
    except (TypeError, ValueError):
      message = str(record.msg)
    return not (files.disk_fault(Exception(message)) or (
        f'{os.sep}orbax{os.sep}' in (record.pathname or '') and
        any(s in message for s in self._SAVE_THREADS)))


def _is_ours(record: logging.LogRecord) -> bool:
  path = os.path.abspath(record.pathname or '')
  return path.startswith(_OURS[0]) or path == _OURS[1]


@contextlib.contextmanager
def disk_faults_reported_once() -> Iterator[None]:
  """Within the block, libraries' own reports of a disk fault are dropped;
  the caller reports it (training: the failed save or write, the newest
  intact checkpoint)."""
  absl_logger = logging.getLogger('absl')
  quiet = _DiskFaultReports()
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)
