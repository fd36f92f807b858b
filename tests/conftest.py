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

# Test-only XLA CPU compile settings (main.py never sets them): LLVM at -O1
# and XLA's older elementwise emitters. The tiny programs compile faster
# and step as fast; both sides of every comparison run under them.
TEST_COMPILE_FLAGS = ('--xla_backend_optimization_level=1',
                      '--xla_cpu_use_fusion_emitters=false')

# Must happen before jax is imported anywhere in the test process. The
# convolution kernels are the ones main.py picks by default, plus the
# compile settings above (the suite is mostly compiles); processes the
# tests start get the same (`helpers.xla_flags`).
os.environ.setdefault('XLA_FLAGS', ' '.join(
    ['--xla_force_host_platform_device_count=4']
    + xla_flags.cpu_flags(xla_flags.resolve(xla_flags.DEFAULT))
    + list(TEST_COMPILE_FLAGS)))
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

# The files that take longest, first: `-n 2 --dist loadfile` hands out whole
# files in collection order, so a long file started last would run alone
# at the end while the other worker idles.
LONGEST_FIRST = (
    'test_sizes.py', 'test_gan_switches.py', 'test_robustness.py',
    'test_train_process.py', 'test_speedups.py', 'test_fault_probes.py',
    'test_train.py', 'test_benchmark.py', 'test_device_check.py',
    'test_grad_accum.py', 'test_feature_cache.py', 'test_init_from.py',
    'test_legacy_fixtures.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(
      os.path.basename(str(item.fspath)), len(rank)))
