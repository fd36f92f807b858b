"""Test set-up: 4 fake CPU devices, main.py's XLA flags, a compilation cache
for the session, parsed absl flags, repo root importable."""

import atexit
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from jaxcolor.runtime import xla_flags  # pylint: disable=g-import-not-at-top

# Must happen before jax is imported anywhere in the test process. The
# convolution kernels are the ones main.py picks by default.
os.environ.setdefault('XLA_FLAGS', ' '.join(
    ['--xla_force_host_platform_device_count=4']
    + xla_flags.cpu_flags(xla_flags.DEFAULT)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The tests compile the same tiny programs many times (and in the processes
# they start): JAX's persistent compilation cache, fresh for each session,
# compiles each once.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='jaxcolor-tests-xla-cache-')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

from absl import flags  # pylint: disable=g-import-not-at-top

# Grain worker processes read absl flags; under pytest nobody parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
