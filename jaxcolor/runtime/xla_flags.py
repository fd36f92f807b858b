"""XLA flags main.py sets for its process, from `config.xla_cpu_convolutions`.

XLA's CPU backend (jaxlib 0.10) hands convolutions to YNNPACK by default.
On this model's shapes its own Eigen convolutions are faster
(docs/benchmarks.md): 'eigen' turns YNNPACK off for convolutions only
(matmuls stay on YNNPACK, which is as fast or faster there). 'onednn' is
'eigen' with the matmuls on oneDNN (XLA's oneDNN dot fusions; jaxlib 0.10
has no oneDNN path for convolutions, and computes bfloat16 matmuls whose
result is bfloat16 in float32 before any library sees them). 'auto' picks
by the CPU's instruction set and the compute dtype (`resolve`); 'default'
leaves XLA's choice. The flags only affect the CPU compiler, so they are
harmless on GPUs and TPUs.

XLA reads XLA_FLAGS once, when JAX starts its first backend, so `apply`
must run before anything computes; a value the user already put in
XLA_FLAGS wins.
"""

import os
from typing import Any, Optional

from absl import logging

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
ONEDNN_FLAG = '--xla_cpu_use_onednn'
ONEDNN_FUSIONS_FLAG = '--xla_cpu_experimental_onednn_fusion_type'
CHOICES = ('auto', 'eigen', 'onednn', 'default')
DEFAULT = 'auto'  # also for modes that run without --config (colorize, ...)
CPUINFO = '/proc/cpuinfo'


def cpu_features(path: str = CPUINFO) -> frozenset[str]:
  """The CPU's feature flags as Linux lists them ('avx512_bf16', 'amx_bf16',
  ...); empty where the file is missing or unreadable (other systems)."""
  try:
    with open(path, encoding='ascii', errors='replace') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() in ('flags', 'Features'):
          return frozenset(value.split())
  except OSError:
    pass
  return frozenset()


# (compute dtype, CPU feature flag) -> the choice 'auto' makes there, for
# the CPU kinds where a measurement showed a choice faster than 'eigen'.
# None has yet: the one that seemed to ('onednn' for bfloat16 with
# 'amx_bf16') compared two identical programs, since its flags then put
# nothing on oneDNN (docs/benchmarks.md, "What XLA CPU runs in bfloat16").
FASTER_THAN_EIGEN: dict[tuple[str, str], str] = {}


def cpu_rule(rules: dict[tuple[str, str], Any], dtype: str,
             features: Optional[frozenset[str]] = None) -> Any:
  """What `rules` ((compute dtype, CPU feature flag) -> choice) name for
  `dtype` on a CPU with `features` (default `cpu_features()`): the first
  rule that applies, in the dict's order; None where none does."""
  if not rules:
    return None
  features = cpu_features() if features is None else features
  for (rule_dtype, feature), chosen in rules.items():
    if rule_dtype == dtype and feature in features:
      return chosen
  return None


def resolve(choice: str, dtype: str = 'float32',
            features: Optional[frozenset[str]] = None,
            rules: Optional[dict[tuple[str, str], str]] = None) -> str:
  """config.xla_cpu_convolutions -> the choice it stands for on this CPU.

  'auto' is the choice `rules` (default `FASTER_THAN_EIGEN`) names for
  `dtype` and one of the CPU's `features` (default `cpu_features()`), and
  'eigen' where none does.
  """
  if choice not in CHOICES:
    raise _unknown(choice)
  if choice != 'auto':
    return choice
  rules = FASTER_THAN_EIGEN if rules is None else rules
  return cpu_rule(rules, dtype, features) or 'eigen'


def cpu_flags(convolutions: str) -> list[str]:
  """A resolved choice ('eigen', 'onednn', 'default') -> the XLA flags that
  select it."""
  if convolutions == 'eigen':
    return [f'{YNN_FLAG}=-individual_convolution']
  if convolutions == 'onednn':
    # oneDNN only gets the ops a fusion type names: the first flag alone
    # changes nothing in jaxlib 0.10. 'individual_dot', not 'dot': a 'dot'
    # fusion may hold two matmuls and their sum, which oneDNN fails to
    # compile, and the process dies (SIGILL).
    return cpu_flags('eigen') + [f'{ONEDNN_FLAG}=true',
                                 f'{ONEDNN_FUSIONS_FLAG}=individual_dot']
  if convolutions == 'default':
    return []
  raise _unknown(convolutions)


def _unknown(choice: str) -> ValueError:
  return ValueError(f'config.xla_cpu_convolutions={choice!r}; expected one '
                    f'of {CHOICES}')


def backends_started() -> bool:
  """Whether JAX has started a backend (XLA_FLAGS is then already read)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return bool(xla_bridge._backends)  # pylint: disable=protected-access


def apply(convolutions: str, dtype: str = 'float32') -> str:
  """Adds the flags of `resolve(convolutions, dtype)` to
  os.environ['XLA_FLAGS'].

  Returns XLA_FLAGS as it is now. A flag the user already set for the same
  option is kept (and logged). Raises ValueError for an unknown choice,
  RuntimeError if a backend has already started, since XLA would no longer
  read the flags.
  """
  chosen = resolve(convolutions, dtype)
  if chosen not in (convolutions, 'eigen'):  # 'auto' took the rarer path
    logging.info('config.xla_cpu_convolutions=%r: %r for %s on this CPU.',
                 convolutions, chosen, dtype)
  if chosen == 'onednn':
    logging.info("xla_cpu_convolutions='onednn': XLA cannot write CPU "
                 'programs that call oneDNN to the compilation cache; JAX '
                 'warns once per such program and the run goes on.')
  current = os.environ.get('XLA_FLAGS', '')
  wanted = []
  for flag in cpu_flags(chosen):
    option = flag.split('=')[0]
    if option in current:
      logging.info('XLA_FLAGS already sets %s; config.xla_cpu_convolutions='
                   '%r does not change it.', option, convolutions)
    else:
      wanted.append(flag)
  if not wanted:
    return current
  if backends_started():
    raise RuntimeError('xla_flags.apply must run before JAX starts a backend '
                       '(XLA reads XLA_FLAGS only once).')
  os.environ['XLA_FLAGS'] = ' '.join([current] + wanted).strip()
  return os.environ['XLA_FLAGS']
