"""Builds the kernel library: `python -m jaxcolor.kernels.build`.

Compiles dnnl_conv.cc, winograd.cc and adam.cc with the C++ compiler ($CXX,
else g++) against oneDNN's headers and library (PyPI's onednn-cpu-gomp and
onednn-devel-cpu-gomp, in requirements.txt, install them into the Python
environment; a system oneDNN 3.x under /usr or /usr/local is taken
too) and XLA's FFI headers from jaxlib, into jaxcolor/kernels/_kernels.so.
The library is written beside a temporary name and renamed, so a failed or
interrupted build leaves the previous one. Errors are one line; exit
status 1.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from absl import app
from absl import flags
import jax

from jaxcolor.kernels import library

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(HERE, name)
                for name in ('dnnl_conv.cc', 'winograd.cc', 'adam.cc'))

_CXX = flags.DEFINE_string('cxx', None, 'C++ compiler (default: $CXX, g++).')
_ONEDNN = flags.DEFINE_string(
    'onednn', None, 'Prefix holding include/oneapi/dnnl and lib/libdnnl.so '
    '(default: this Python environment, /usr/local, /usr).')


class BuildError(RuntimeError):
  pass


def find_onednn(prefix=None):
  """(include dir, lib dir) of a oneDNN 3.x install; BuildError if none."""
  prefixes = [prefix] if prefix else [
      sys.prefix, sysconfig.get_config_var('prefix') or sys.prefix,
      '/usr/local', '/usr']
  for p in prefixes:
    include = os.path.join(p, 'include')
    if not os.path.exists(os.path.join(include, 'oneapi', 'dnnl',
                                       'dnnl.hpp')):
      continue
    for lib in ('lib', 'lib64', 'lib/x86_64-linux-gnu',
                'lib/aarch64-linux-gnu'):
      if os.path.exists(os.path.join(p, lib, 'libdnnl.so')):
        return include, os.path.join(p, lib)
  raise BuildError(
      'oneDNN not found (looked in ' + ', '.join(prefixes) + '): pip install '
      'onednn-cpu-gomp onednn-devel-cpu-gomp (requirements.txt), or pass '
      '--onednn=PREFIX')


def command(cxx, ffi_include, dnnl_include, dnnl_lib, out):
  # -fno-math-errno: sqrt as an instruction (adam.cc's loop vectorises).
  return [cxx, '-O2', '-fno-math-errno', '-std=c++17', '-fopenmp', '-shared',
          '-fPIC', '-Wno-return-type', f'-I{ffi_include}', f'-I{dnnl_include}',
          *SOURCES, f'-L{dnnl_lib}', '-ldnnl', f'-Wl,-rpath,{dnnl_lib}',
          '-o', out]


def build(cxx=None, onednn=None) -> str:
  """Compiles the kernel library; returns its path. BuildError on failure."""
  cxx = cxx or os.environ.get('CXX') or 'g++'
  if not shutil.which(cxx):
    raise BuildError(f'no C++ compiler {cxx!r} on PATH (set $CXX or --cxx)')
  dnnl_include, dnnl_lib = find_onednn(onednn)
  try:
    fd, temp = tempfile.mkstemp(prefix='._kernels.', suffix='.so', dir=HERE)
  except OSError as e:
    raise BuildError(f'cannot write into {HERE}: {e.strerror}') from None
  os.close(fd)
  try:
    p = subprocess.run(
        command(cxx, jax.ffi.include_dir(), dnnl_include, dnnl_lib, temp),
        capture_output=True, text=True, check=False)
    if p.returncode:
      errors = [l for l in p.stderr.splitlines() if 'error' in l]
      raise BuildError(f'{cxx} failed: ' +
                       (errors[0] if errors else p.stderr.strip()[-300:]))
    os.chmod(temp, 0o755)
    os.replace(temp, library.LIBRARY)
  finally:
    if os.path.exists(temp):
      os.remove(temp)
  return library.LIBRARY


def main(argv):
  del argv
  try:
    path = build(_CXX.value, _ONEDNN.value)
  except BuildError as e:
    sys.exit(f'jaxcolor.kernels.build: {e}')
  print(f'built {os.path.relpath(path)}')


if __name__ == '__main__':
  app.run(main)
