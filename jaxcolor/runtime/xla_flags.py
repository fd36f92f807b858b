"""XLA flags main.py sets for its process, from `config.xla_cpu_convolutions`.

XLA's CPU backend (jaxlib 0.10) hands convolutions to YNNPACK by default.
On this model's shapes its own Eigen convolutions are faster: the paper
step at batch 64 on 2 CPU cores takes 12.7 s with Eigen convolutions and
18.4 s with YNNPACK's (docs/benchmarks.md). 'eigen' turns YNNPACK off for
convolutions only (matmuls stay on YNNPACK, which is as fast or faster
there); 'default' leaves XLA's choice. The flag only affects the CPU
compiler, so it is harmless on GPUs and TPUs.

XLA reads XLA_FLAGS once, when JAX starts its first backend, so `apply`
must run before anything computes; a value the user already put in
XLA_FLAGS wins.
"""

import os

from absl import logging

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
CHOICES = ('eigen', 'default')
DEFAULT = 'eigen'  # also for modes that run without --config (colorize, ...)


def cpu_flags(convolutions: str) -> list[str]:
  """config.xla_cpu_convolutions -> the XLA flags that select it."""
  if convolutions == 'eigen':
    return [f'{YNN_FLAG}=-individual_convolution']
  if convolutions == 'default':
    return []
  raise ValueError(f'config.xla_cpu_convolutions={convolutions!r}; expected '
                   f'one of {CHOICES}')


def backends_started() -> bool:
  """Whether JAX has started a backend (XLA_FLAGS is then already read)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return bool(xla_bridge._backends)  # pylint: disable=protected-access


def apply(convolutions: str) -> str:
  """Adds `cpu_flags(convolutions)` to os.environ['XLA_FLAGS'].

  Returns XLA_FLAGS as it is now. Flags the user already set for the same
  option are kept (and logged). Raises RuntimeError if a backend has
  already started, since XLA would no longer read the flags.
  """
  wanted = cpu_flags(convolutions)
  current = os.environ.get('XLA_FLAGS', '')
  if not wanted:
    return current
  if YNN_FLAG in current:
    logging.info('XLA_FLAGS already sets %s; config.xla_cpu_convolutions=%r '
                 'is not applied.', YNN_FLAG, convolutions)
    return current
  if backends_started():
    raise RuntimeError('xla_flags.apply must run before JAX starts a backend '
                       '(XLA reads XLA_FLAGS only once).')
  os.environ['XLA_FLAGS'] = ' '.join([current] + wanted).strip()
  return os.environ['XLA_FLAGS']
