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

Each mode's module is imported only when chosen, so light modes start fast.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

MODES = ('train', 'prepare', 'benchmark', 'colorize', 'export', 'evaluate',
         'report', 'serve')
# Modes that read the run's config from --workdir (a workdir or a bundle).
NO_CONFIG_MODES = ('colorize', 'export', 'evaluate', 'report', 'serve')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to an ml_collections config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, outputs.')
flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
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


def parse_flags(argv):
  """absl's parser, with a one-line error for an unknown --config.<key>."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
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

  from jaxcolor import console  # pylint: disable=g-import-not-at-top
  console.quiet_libraries(FLAGS.verbosity)
  try:
    # Before anything computes: XLA reads XLA_FLAGS once, at backend start.
    from jaxcolor import xla_flags  # pylint: disable=g-import-not-at-top
    xla_flags.apply(xla_flags.DEFAULT if config is None
                    else config.get('xla_cpu_convolutions', xla_flags.DEFAULT))
    if config is not None:  # every shared count and size, before any work
      from jaxcolor import config_check  # pylint: disable=g-import-not-at-top
      config_check.check(config)
    if FLAGS.mode == 'train':
      from jaxcolor import train  # pylint: disable=g-import-not-at-top
      train.train_and_evaluate(config, workdir)
    elif FLAGS.mode == 'prepare':
      from jaxcolor import prepare  # pylint: disable=g-import-not-at-top
      prepare.prepare(config)
    elif FLAGS.mode == 'benchmark':
      from jaxcolor import benchmark  # pylint: disable=g-import-not-at-top
      benchmark.run(config, workdir, config_flags.get_config_filename(
          FLAGS['config']))
    elif FLAGS.mode == 'colorize':
      from jaxcolor import colorize  # pylint: disable=g-import-not-at-top
      colorize.run(workdir, FLAGS.input, FLAGS.output,
                   side_by_side_output=FLAGS.side_by_side,
                   overwrite=FLAGS.overwrite, step=FLAGS.step,
                   chroma_upsampling=FLAGS.chroma_upsampling)
    elif FLAGS.mode == 'export':
      from jaxcolor import inference  # pylint: disable=g-import-not-at-top
      inference.export(workdir, FLAGS.output, step=FLAGS.step)
    elif FLAGS.mode == 'evaluate':
      from jaxcolor import evaluate  # pylint: disable=g-import-not-at-top
      evaluate.run(workdir, FLAGS.input, FLAGS.output, step=FLAGS.step,
                   chroma_upsampling=FLAGS.chroma_upsampling)
    elif FLAGS.mode == 'report':
      from jaxcolor import report  # pylint: disable=g-import-not-at-top
      for path in report.run(workdir):
        print(path)
    elif FLAGS.mode == 'serve':
      from jaxcolor import serve  # pylint: disable=g-import-not-at-top
      serve.run(workdir, host=FLAGS.host, port=FLAGS.port,
                chroma_upsampling=FLAGS.chroma_upsampling)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    # Bad paths, configs, data or checkpoints, and diverged training: the
    # message says what to do; a traceback would only bury it.
    logging.error('%s: %s', type(e).__name__, e)
    logging.debug('Traceback (shown with --verbosity=1):', exc_info=True)
    sys.exit(1)
  except KeyboardInterrupt as e:  # SIGINT, or SIGTERM while waiting
    signum = getattr(e, 'signum', 2)
    logging.warning('%s stopped by signal %d.', FLAGS.mode, signum)
    sys.exit(128 + signum)
  logging.info('%s done.', FLAGS.mode)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
