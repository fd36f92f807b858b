"""Profiler traces of chosen train steps (`config.profile_steps`).

`StepTrace` wraps `jax.profiler.start_trace`/`stop_trace` around a window
of steps: the trace starts before the first call that runs a step of the
window and stops once the call that runs its last step has finished. A call
of `steps_per_call` steps is traced whole, so the trace may cover a few
steps more than asked. JAX writes one trace per process,
`<log_dir>/plugins/profile/<timestamp>/<host>.xplane.pb` (TensorBoard's
profile plugin) and `<host>.trace.json.gz` (Chrome trace format); a
single-process run also gets `perfetto_trace.json.gz` for ui.perfetto.dev.

A trace that cannot start or be written is a warning: profiling never
stops a run.
"""

import glob
import os
from typing import Any, Optional, Sequence

from absl import logging
import jax


def window(profile_steps: Sequence[int]) -> Optional[tuple[int, int]]:
  """config.profile_steps (start, count) -> (first, last) step, or None."""
  if not profile_steps:
    return None
  start, count = profile_steps
  return int(start), int(start) + int(count) - 1


class StepTrace:
  """Traces steps `first..last` (1-based, inclusive) into `log_dir`.

  Call `step_begins(first_step_of_call)` before a call, `step_done(
  last_step_of_call, outputs)` after it, and `close()` when the run ends
  (also on errors and signals: it stops a trace still running). Once
  stopped, a trace is not started again.
  """

  def __init__(self, profile_steps: Sequence[int], log_dir: str,
               steps_per_call: int = 1, what: str = 'steps',
               run: Optional[range] = None):
    """`run`: the steps this run will make (a warning if none is traced)."""
    self.window = window(profile_steps)
    self.log_dir = log_dir
    self.k = steps_per_call
    self.what = what          # how the console names the traced units
    self.running = False
    self.finished = self.window is None
    self.traced = None        # (first, last) unit actually traced
    self.folder = None        # where the trace went, once written
    if self.window and run is not None and not (
        run and self.window[0] <= run[-1] and self.window[1] >= run[0]):
      logging.warning('config.profile_steps=%s: %s %d..%d are not in this '
                      'run (%s); nothing is traced.', tuple(profile_steps),
                      what, *self.window,
                      f'{what} {run[0]}..{run[-1]}' if run else f'no {what}')

  def _overlaps(self, first: int) -> bool:
    lo, hi = self.window
    return first <= hi and first + self.k - 1 >= lo

  def step_begins(self, first: int) -> None:
    """Starts the trace if the call running steps first..first+k-1 is in
    the window."""
    if self.finished or self.running or not self._overlaps(first):
      return
    try:
      jax.profiler.start_trace(self.log_dir,
                               create_perfetto_trace=jax.process_count() == 1)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Profiler trace not started (%s: %s); going on '
                      'without it.', type(e).__name__, e)
      self.finished = True
      return
    self.running = True
    self.traced = (first, first)

  def step_done(self, last: int, outputs: Any = None) -> Optional[str]:
    """After the call ending at step `last`: once the window's last step has
    run, waits for `outputs` and writes the trace. Returns its folder when
    it was written by this call."""
    if not self.running:
      return None
    self.traced = (self.traced[0], last)
    if last < self.window[1]:
      return None
    jax.block_until_ready(outputs)
    return self.close()

  def close(self) -> Optional[str]:
    """Stops a running trace and writes it; returns its folder (or None)."""
    if not self.running:
      return None
    self.running, self.finished = False, True
    try:
      jax.profiler.stop_trace()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Profiler trace of %s %d..%d not written (%s: %s).',
                      self.what, *self.traced, type(e).__name__, e)
      return None
    self.folder = newest_trace_folder(self.log_dir) or self.log_dir
    logging.info('Profiler trace of %s %d..%d -> %s (view: tensorboard '
                 '--logdir %s with its profile plugin, or open %s in '
                 'ui.perfetto.dev).', self.what, *self.traced, self.folder,
                 self.log_dir, 'perfetto_trace.json.gz'
                 if jax.process_count() == 1 else '<host>.trace.json.gz')
    return self.folder


def newest_trace_folder(log_dir: str) -> Optional[str]:
  """The newest `<log_dir>/plugins/profile/<timestamp>` folder, or None."""
  folders = glob.glob(os.path.join(log_dir, 'plugins', 'profile', '*', ''))
  if not folders:
    return None
  return os.path.normpath(max(folders, key=os.path.getmtime))
