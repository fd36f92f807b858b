"""Tiny model workdirs shared by the evaluate and report tests.

Each is made once per test session (training costs most of their runtime)
under pytest's session temporary folder.
"""

import jax

from jaxcolor import checkpoint
from jaxcolor import train
from jaxcolor.data import pipeline
import test_cic_train
import test_scgan
import test_train

_MADE = {}


def gan_run(tmp_path_factory) -> str:
  """The paper's model (tiny widths) trained 2 steps, logging every step.

  Holds what a real run leaves: checkpoints/2, event files, chroma.json.
  """
  if 'gan' not in _MADE:
    workdir = str(tmp_path_factory.mktemp('gan_run'))
    train.train_and_evaluate(
        test_train.tiny_config(num_train_steps=2, log_every_steps=1), workdir)
    _MADE['gan'] = workdir
  return _MADE['gan']


def untrained(kind: str, tmp_path_factory) -> str:
  """A workdir with a step-0 checkpoint of the tiny 'scgan' or 'cic' model.

  Made with the trainer's own state and checkpoint code, without a training
  step (cheap); no chroma.json, so loading it computes the mean chroma.
  """
  if kind not in _MADE:
    config = {'scgan': test_scgan.tiny_scgan,
              'cic': test_cic_train.tiny_cic}[kind]()
    workdir = str(tmp_path_factory.mktemp(f'{kind}_run'))
    family = train.make_family(config)
    state = jax.jit(family.create_state)(
        *family.init_args(config, train.init_key(config.seed)))
    data = iter(pipeline.build_train_dataset(config, process_index=0,
                                             process_count=1))
    manager = checkpoint.create_manager(workdir, config)
    checkpoint.save(manager, 0, state, data, config)
    manager.wait_until_finished()
    _MADE[kind] = workdir
  return _MADE[kind]
