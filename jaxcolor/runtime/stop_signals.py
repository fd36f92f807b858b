"""SIGTERM and SIGINT as an exception, so a stopped command cleans up.

`with stop_signals.raised():` turns either signal into `Stopped` (a
KeyboardInterrupt carrying the signal's number) in the main thread: the
file being written is removed by its `files.atomic_path`, the command says
how far it got, and main.py exits with 128 + the signal's number. Training
has its own handling (it finishes the step and saves a checkpoint).
"""

import contextlib
import signal
import threading
from typing import Iterator


class Stopped(KeyboardInterrupt):
  """A stop signal arrived; `detail` may say how far the command got."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum
    self.detail = ''


def _raise(signum, _frame):
  raise Stopped(signum)


@contextlib.contextmanager
def raised(signums=(signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
  """Within the block, the signals raise `Stopped` (main thread only;
  elsewhere Python cannot install handlers, and the block runs as is)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  old = {s: signal.signal(s, _raise) for s in signums}
  try:
    yield
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
