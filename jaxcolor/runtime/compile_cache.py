"""JAX's persistent compilation cache, from `config.compilation_cache_dir`.

XLA's compiled programs are written to a folder keyed by the program, the
JAX/jaxlib version, the devices and the XLA flags; a second start of the
same model loads them instead of compiling again (docs/benchmarks.md,
*Compilation cache*). main.py calls `apply` for every mode before anything
computes (modes without --config use `DEFAULT`).

- `DEFAULT` ('~/.cache/jaxcolor/xla') means `$XDG_CACHE_HOME/jaxcolor/xla`
  when XDG_CACHE_HOME is set; '' turns the cache off.
- The JAX_COMPILATION_CACHE_DIR env var, when set, wins: JAX reads it itself
  and `apply` leaves it alone (the tests give each session its own folder).
- A folder that cannot be made or written is one warning; the run goes on
  without the cache.
- Programs that compile in under a second are not written
  (`jax_persistent_cache_min_compile_time_secs`, JAX's default, kept: the
  models' steps take longer, and loading an entry is not free).
"""

import os
import tempfile
from typing import Optional

from absl import logging

ENV = 'JAX_COMPILATION_CACHE_DIR'
DEFAULT = '~/.cache/jaxcolor/xla'  # also for modes without --config


def resolve(directory: str) -> str:
  """config.compilation_cache_dir -> an absolute folder ('' stays '')."""
  if not directory:
    return ''
  xdg = os.environ.get('XDG_CACHE_HOME')
  if directory == DEFAULT and xdg:
    directory = os.path.join(xdg, 'jaxcolor', 'xla')
  return os.path.abspath(os.path.expanduser(directory))


def _writable(folder: str) -> Optional[str]:
  """None when `folder` can be made and written, else why not (one line)."""
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    return f'{type(e).__name__}: {e.strerror or e}'
  return None


def apply(directory: str) -> Optional[str]:
  """Points JAX's compilation cache at `directory`; returns the folder used.

  Returns None when the cache is off ('' or an unusable folder), and the
  env var's value when JAX_COMPILATION_CACHE_DIR is set (then nothing is
  changed). Must run before the first compile: JAX opens its cache once.
  """
  if ENV in os.environ:
    logging.info('Compilation cache: %s (from %s; '
                 'config.compilation_cache_dir is not applied).',
                 os.environ[ENV] or 'off', ENV)
    return os.environ[ENV] or None
  folder = resolve(directory)
  if not folder:
    return None
  problem = _writable(folder)
  if problem:
    logging.warning('Compilation cache folder %s is not usable (%s); going '
                    'on without the cache (set config.compilation_cache_dir, '
                    "or '' to turn it off).", folder, problem)
    return None
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', folder)
  logging.info('Compilation cache: %s', folder)
  return folder
