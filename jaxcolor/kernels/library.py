"""The kernel library `_kernels.so` (dnnl_conv.cc, winograd.cc, adam.cc):
loading it.

Built from source by `python -m jaxcolor.kernels.build` (g++, and oneDNN
from PyPI: requirements.txt) into this folder; `load()` registers its XLA
FFI targets or says why it cannot.
"""

import ctypes
import functools
import os

import jax

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       '_kernels.so')
# XLA custom-call target -> the library's handler symbol.
TARGETS = {'jaxcolor_dnnl_conv_fwd': 'JaxcolorDnnlConvFwd',
           'jaxcolor_dnnl_conv_bwd_data': 'JaxcolorDnnlConvBwdData',
           'jaxcolor_dnnl_conv_bwd_weights': 'JaxcolorDnnlConvBwdWeights',
           'jaxcolor_winograd_fwd': 'JaxcolorWinogradFwd',
           'jaxcolor_winograd_bwd_weights': 'JaxcolorWinogradBwdWeights',
           'jaxcolor_adam': 'JaxcolorAdam'}


class Unavailable(RuntimeError):
  """The kernel library is not built or does not load."""


@functools.cache
def load() -> str:
  """Registers the custom calls once per process; '' or why they can't be.

  XLA's custom-call registry is process-wide, hence the cache.
  """
  if not os.path.exists(LIBRARY):
    return ('the kernel library is not built: pip install -r '
            'requirements.txt && python -m jaxcolor.kernels.build')
  try:
    lib = ctypes.cdll.LoadLibrary(LIBRARY)
    handlers = {target: getattr(lib, symbol)
                for target, symbol in TARGETS.items()}
  except (OSError, AttributeError) as e:  # not a library, or another one
    return (f'the kernel library does not load ({e}); rebuild it: '
            'python -m jaxcolor.kernels.build')
  for target, handler in handlers.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler),
                                platform='cpu')
  return ''


def why_unavailable() -> str:
  """'' where this process can run the library's kernels, else why not: no
  CPU backend, or `load()`'s reason."""
  if jax.default_backend() != 'cpu':
    return 'the kernel library runs on CPUs only'
  return load()
