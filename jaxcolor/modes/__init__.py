"""The modes of `main.py --mode=...`: one module each, entered by `main`.

Each module here has `main(config, args)` (`config` None for the modes that
read the run's config from --workdir). A mode never imports another mode:
what two share lives below them (`jaxcolor.inference`, `jaxcolor.trainer`,
`jaxcolor.records`, `jaxcolor.color.recombine`).
"""

import dataclasses
from typing import Optional

NAMES = ('train', 'prepare', 'benchmark', 'colorize', 'export', 'evaluate',
         'report', 'serve')
# Modes that read the run's config from --workdir (a workdir or a bundle).
CONFIG_FROM_WORKDIR = ('colorize', 'export', 'evaluate', 'report', 'serve')


@dataclasses.dataclass(frozen=True)
class Args:
  """The command line's flags other than --config and --mode."""
  workdir: Optional[str] = None
  input: Optional[str] = None
  output: Optional[str] = None
  step: Optional[int] = None
  side_by_side: bool = False
  overwrite: bool = False
  chroma_upsampling: str = 'bilinear'
  port: int = 7860
  host: str = '127.0.0.1'
  config_name: Optional[str] = None  # the --config file's path
  # Import paths of model families that model files may name (--allow_family).
  allow_families: tuple[str, ...] = ()
  serve_memory_mb: Optional[float] = None
  serve_hosts: tuple[str, ...] = ()
