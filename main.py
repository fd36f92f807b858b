"""jaxcolor command line: train, prepare records, benchmark, colorize, export.

  python main.py --mode=train --config=configs/quickstart.py --workdir=runs/qs
  python main.py --mode=prepare --config=configs/default.py \
      --config.data.train_dir=DIR --config.data.prepared_dir=OUT
  python main.py --mode=benchmark --config=configs/default.py \
      --config.benchmark.what=all --config.data.train_dir=DIR
  python main.py --mode=colorize --workdir=RUN --input=PHOTOS --output=OUT
  python main.py --mode=export --workdir=RUN --output=BUNDLE
  python main.py --mode=evaluate --workdir=RUN --input=COLOUR_PHOTOS
  python main.py --mode=report --workdir=RUN
  python main.py --mode=serve --workdir=RUN [--port=7860] [--host=127.0.0.1]

Each mode is one module of jaxcolor/modes/ with a `main(config, args)`,
imported only when chosen, so light modes start fast.
"""

import importlib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxcolor import modes

# --mode -> the module that runs it.
MODES = {name: f'jaxcolor.modes.{name}' for name in modes.NAMES}
NO_CONFIG_MODES = modes.CONFIG_FROM_WORKDIR

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to an ml_collections config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, outputs.')
flags.DEFINE_enum('mode', 'train', tuple(MODES), 'What to do.')
flags.DEFINE_string('input', None,
                    'colorize: a photo or a folder (recursive); evaluate: a '
                    'folder of colour photos.')
flags.DEFINE_string('output', None,
                    'colorize: folder for the results; export: bundle folder; '
                    'evaluate: results folder (default RUN/evaluation/NAME).')
flags.DEFINE_bool('side_by_side', False, 'colorize: write gray | colour.')
flags.DEFINE_bool('overwrite', False,
                  'colorize: replace files already in --output (by default '
                  'they are left alone and listed).')
flags.DEFINE_integer('step', None,
                     'colorize, evaluate, export: the checkpoint step to use '
                     '(default: the newest intact one).')
flags.DEFINE_enum('chroma_upsampling', 'bilinear', ('bilinear', 'guided'),
                  'colorize/evaluate/serve: how the model\'s chroma reaches '
                  'the photo\'s size: bilinear, or guided (a guided filter '
                  'on the photo\'s own gray keeps colour inside edges).')
flags.DEFINE_integer('port', 7860, 'serve: the port of the web page.')
flags.DEFINE_string('host', '127.0.0.1', 'serve: the address to listen on '
                    '(0.0.0.0: every network interface).')
flags.DEFINE_float('serve_memory_mb', None,
                   'serve: MB of photo work at once (photos wait their turn; '
                   'one that alone needs more is refused). Default: one '
                   'photo at the model\'s data.max_image_pixels.')
flags.DEFINE_multi_string(
    'serve_host', [], 'serve: a name to answer to besides the address it '
    'listens on (e.g. a reverse proxy\'s); other Host headers get 421.')
flags.DEFINE_multi_string(
    'allow_family', [],
    'colorize, evaluate, export, report, serve: a model family outside '
    'jaxcolor (package.module:Class) that the model files of --workdir may '
    'name. Without it, a saved config naming code by import path is refused '
    'before anything is imported: model files are data, never code.')


def _check_config_file(argv) -> None:
  """A --config that names no regular file (a FIFO would block its import
  forever) is refused before absl loads it."""
  from jaxcolor.runtime import files  # pylint: disable=g-import-not-at-top
  for arg in argv[1:]:
    if arg.startswith('--config='):
      value = arg.split('=', 1)[1]
      # 'file.py:ARG' picks a variant of the file's get_config(arg).
      path = value if os.path.lexists(value) else value.rsplit(':', 1)[0]
      reason = (files.not_regular_reason(path, files.JSON_LIMIT)
                if os.path.lexists(path) else None)
      if reason:
        sys.exit(f'FATAL --config={value} cannot be loaded: {reason}')


def parse_flags(argv):
  """absl's parser, with a one-line error for an unknown --config.<key>."""
  _check_config_file(argv)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = str(e).strip()
    if 'Error whilst parsing config file' in text:
      # The config file raised (e.g. get_config(arg) refusing its arg):
      # its own message, without the traceback absl embeds.
      sys.exit(f'FATAL --config cannot be loaded: {text.splitlines()[-1]}')
    sys.exit(f'FATAL Flags parsing error: {e}')
  except (AttributeError, KeyError) as e:
    # ml_collections reports a bad override path as a nested KeyError.
    detail = ' '.join(str(e).encode().decode('unicode_escape').split())
    detail = detail.replace("''", "'").removesuffix("'")
    sys.exit(f'FATAL unknown config key on the command line: {detail}')


def load_config():
  """FLAGS.config, or one FATAL line when the file cannot be loaded."""
  config = FLAGS.config
  if config is None:
    return None
  try:
    config.keys()  # a file that failed to load raises on first use
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    sys.exit(f'FATAL --config={config_flags.get_config_filename(FLAGS["config"])}'
             f' cannot be loaded: {reason}')
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = load_config()
  workdir = FLAGS.workdir
  if FLAGS.mode not in NO_CONFIG_MODES and config is None:
    raise app.UsageError(f'--config is required for --mode={FLAGS.mode}')
  if FLAGS.mode in ('train',) + NO_CONFIG_MODES and not workdir:
    raise app.UsageError(f'--workdir is required for --mode={FLAGS.mode}')
  if FLAGS.mode == 'evaluate' and not FLAGS.input:
    raise app.UsageError('--input=DIR (colour photos) is required for '
                         '--mode=evaluate')

  from jaxcolor.runtime import console  # pylint: disable=g-import-not-at-top
  console.quiet_libraries(FLAGS.verbosity)
  try:
    # Before anything computes: XLA reads XLA_FLAGS once, at backend start.
    from jaxcolor.runtime import xla_flags  # pylint: disable=g-import-not-at-top
    if config is None:
      xla_flags.apply(xla_flags.DEFAULT)
    else:
      xla_flags.apply(config.get('xla_cpu_convolutions', xla_flags.DEFAULT),
                      config.get('dtype', 'float32'))
    if config is not None:  # every shared count and size, before any work
      from jaxcolor.runtime import config_check  # pylint: disable=g-import-not-at-top
      config_check.check(config)
    # Before the first compile: JAX opens its persistent cache once.
    from jaxcolor.runtime import compile_cache  # pylint: disable=g-import-not-at-top
    compile_cache.apply(compile_cache.DEFAULT if config is None else
                        config.get('compilation_cache_dir',
                                   compile_cache.DEFAULT))
    args = modes.Args(
        workdir=workdir, input=FLAGS.input, output=FLAGS.output,
        step=FLAGS.step, side_by_side=FLAGS.side_by_side,
        overwrite=FLAGS.overwrite, chroma_upsampling=FLAGS.chroma_upsampling,
        port=FLAGS.port, host=FLAGS.host,
        allow_families=tuple(FLAGS.allow_family),
        serve_memory_mb=FLAGS.serve_memory_mb,
        serve_hosts=tuple(FLAGS.serve_host),
        config_name=(config_flags.get_config_filename(FLAGS['config'])
                     if config is not None else None))
    importlib.import_module(MODES[FLAGS.mode]).main(config, args)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    # Bad paths, configs, data or checkpoints, and diverged training: the
    # message says what to do; a traceback would only bury it.
    logging.error('%s: %s', type(e).__name__, e)
    logging.debug('Traceback (shown with --verbosity=1):', exc_info=True)
    sys.exit(1)
  except OSError as e:
    from jaxcolor.runtime import files  # pylint: disable=g-import-not-at-top
    if not files.is_target_fault(e):
      raise  # not a fault of the disk or a path: a bug, with its traceback
    # A full or read-only disk, a missing permission, a file for a folder.
    logging.error('%s: %s', FLAGS.mode, files.describe(e))
    logging.debug('Traceback (shown with --verbosity=1):', exc_info=True)
    sys.exit(1)
  except KeyboardInterrupt as e:  # SIGINT, or SIGTERM while waiting
    signum = getattr(e, 'signum', 2)
    logging.warning('%s stopped by signal %d%s.', FLAGS.mode, signum,
                    getattr(e, 'detail', ''))
    sys.exit(128 + signum)
  logging.info('%s done.', FLAGS.mode)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
