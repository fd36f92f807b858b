"""What a person sees on the console: jaxcolor's own lines.

Libraries that log through absl (Orbax, Grain, clu's logging writer, JAX)
print INFO lines of their own, around every checkpoint and log step; by
default only their warnings and errors are shown, and jaxcolor's INFO lines
(set-up, a progress line per log step, evaluations, checkpoints). With
`--verbosity=1` (or more) every line is shown.
"""

import logging
import os

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# jaxcolor/ (every module of the package) and the repository's main.py.
_OURS = (_PACKAGE + os.sep,
         os.path.join(os.path.dirname(_PACKAGE), 'main.py'))


class _OwnInfoOnly(logging.Filter):
  """Keeps WARNING and above, and INFO lines logged by jaxcolor itself."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = os.path.abspath(record.pathname or '')
    return path.startswith(_OURS[0]) or path == _OURS[1]


def quiet_libraries(verbosity: int) -> None:
  """Hides other libraries' INFO lines unless `verbosity` >= 1."""
  if verbosity >= 1:
    return
  # TensorFlow (imported by clu's writers, for TensorBoard files only)
  # prints C++ INFO lines as it loads, before absl's filter can see them: on
  # Intel CPUs a notice that its oneDNN ops round differently. jaxcolor
  # runs no TensorFlow op, so those ops are turned off and the lines hidden.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
    handler.addFilter(_OwnInfoOnly())
