"""Test set-up: 4 fake CPU devices, parsed absl flags, repo root importable."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from jaxcolor import xla_flags  # pylint: disable=g-import-not-at-top

# Must happen before jax is imported anywhere in the test process. The
# convolution kernels are the ones main.py picks by default.
os.environ.setdefault('XLA_FLAGS', ' '.join(
    ['--xla_force_host_platform_device_count=4']
    + xla_flags.cpu_flags(xla_flags.DEFAULT)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import flags  # pylint: disable=g-import-not-at-top

# Grain worker processes read absl flags; under pytest nobody parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
