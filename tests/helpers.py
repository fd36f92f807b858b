"""Shared test helpers: tiny configs, fresh states, steps, runs, main.py.

Test modules import these; no test module imports another.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import cic_baseline
from configs import scgan_baseline
from configs import tiny
from jaxcolor.runtime import checkpoint
from jaxcolor import families
from jaxcolor import trainer
from jaxcolor.modes import train
from jaxcolor.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES_DIR = os.path.join(ROOT, 'jaxcolor', 'data', 'samples')


# ------------------------------------------------------------------ configs
def override(config, **overrides):
  """Sets dotted keys, e.g. override(c, **{'optim.b1': 0.5})."""
  for key, value in overrides.items():
    target = config
    *path, leaf = key.split('.')
    for p in path:
      target = target[p]
    target[leaf] = value
  return config


def tiny_config(**overrides):
  """The paper's model with tiny widths (configs/tiny.py), then overrides."""
  return override(tiny.get_config(), **overrides)


SCHEDULE_KEYS = ('num_train_steps', 'log_every_steps', 'image_every_steps',
                 'eval_every_steps', 'num_eval_batches',
                 'checkpoint_every_steps', 'keep_checkpoints')


def on_tiny_data(config, **overrides):
  """`config` with the tiny config's data, schedule and (where the model
  has one) conv_impl (fast compiles), then `overrides`."""
  tiny_ = tiny_config()
  config.data = tiny_.data
  for key in SCHEDULE_KEYS:
    config[key] = tiny_[key]
  if 'conv_impl' in config.model:
    config.model.conv_impl = tiny_.model.conv_impl
  return override(config, **overrides)


def tiny_scgan(**overrides):
  """The SCGAN baseline with the tiny config's widths, data and schedule."""
  config = scgan_baseline.get_config()
  config.model.g_features = tiny_config().model.g_features
  config.model.d_features = tiny_config().model.d_features
  return on_tiny_data(config, **overrides)


def tiny_cic(**overrides):
  """The CIC baseline with narrow blocks and the tiny config's data/schedule."""
  config = cic_baseline.get_config()
  config.model.widths = (8, 16, 16, 32, 16)
  return on_tiny_data(config, **overrides)


TINY = {'gan': tiny_config, 'scgan': tiny_scgan, 'cic': tiny_cic}


# ------------------------------------------------------------------ states
def host(tree):
  """A replicated device tree -> numpy (one copy)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def max_abs_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y))),
      a, b)))


def fresh_state(config, par):
  """(family, a fresh replicated state) of `config`."""
  family = families.build(config)
  return family, trainer.init_state(family, par, config)


def run_steps(config, par, batches):
  """Trains `len(batches)` steps from a fresh state; returns (state, metrics)."""
  family, state = fresh_state(config, par)
  step_fn = par.compile(family.train_step)
  s = par.to_step_layout(state)
  metrics = None
  for b in batches:
    s, metrics = step_fn(s, par.put_batch(b))
  return par.from_step_layout(s), par.fetch(metrics)


def train_batches(n=2, config=None):
  """The first `n` training batches of the tiny config (one process)."""
  it = iter(pipeline.build_train_dataset(config or tiny_config(),
                                         process_index=0, process_count=1))
  return [next(it) for _ in range(n)]


# ------------------------------------------------------------------ runs
def train_then_resume(make_config, workdir):
  """Trains 2 steps, resumes the same workdir to 4; returns the final state."""
  train.train_and_evaluate(make_config(num_train_steps=2), workdir)
  state = train.train_and_evaluate(make_config(num_train_steps=4), workdir)
  assert int(host(state).step) == 4
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  return state


def saved_state(workdir, step):
  """A checkpoint's train state as a tree of numpy arrays."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, restore_args=as_numpy)


_MADE = {}


def gan_run(tmp_path_factory) -> str:
  """The paper's model (tiny widths) trained 2 steps, logging every step.

  Holds what a real run leaves: checkpoints/2, event files, chroma.json.
  Made once per test session.
  """
  if 'gan' not in _MADE:
    workdir = str(tmp_path_factory.mktemp('gan_run'))
    train.train_and_evaluate(
        tiny_config(num_train_steps=2, log_every_steps=1), workdir)
    _MADE['gan'] = workdir
  return _MADE['gan']


def untrained(kind: str, tmp_path_factory) -> str:
  """A workdir with a step-0 checkpoint of the tiny 'scgan' or 'cic' model.

  Made with the trainer's own state and checkpoint code, without a training
  step (cheap); no chroma.json, so loading it computes the mean chroma.
  """
  if kind not in _MADE:
    config = TINY[kind]()
    workdir = str(tmp_path_factory.mktemp(f'{kind}_run'))
    family = families.build(config)
    state = jax.jit(family.init)(
        *family.init_inputs(families.init_key(config.seed)))
    data = iter(pipeline.build_train_dataset(config, process_index=0,
                                             process_count=1))
    manager = checkpoint.create_manager(workdir, config)
    checkpoint.save(manager, 0, state, data, config)
    manager.wait_until_finished()
    _MADE[kind] = workdir
  return _MADE[kind]


# ------------------------------------------------------------------ main.py
def run_main(*args, timeout=120, env=None):
  """main.py in a fresh process from the repo root; CompletedProcess."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             **(env or {}))
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


# main.py as `python main.py ...` runs it (run with `python -c`); on a clean
# exit it prints which tensorflow modules the process imported.
MAIN_REPORTING_TF = (
    'import runpy, sys\n'
    "sys.argv = ['main.py'] + sys.argv[1:]\n"
    'try:\n'
    "  runpy.run_path('main.py', run_name='__main__')\n"
    'except SystemExit as e:\n'
    '  assert not e.code, e.code\n'
    "print('TF_MODULES', sorted(m for m in sys.modules\n"
    "                           if m.split('.')[0] == 'tensorflow'),"
    ' flush=True)\n')


# ------------------------------------------------------------------ photos
def photo(h, w, i=0):
  """A real colour photo (a bundled sample) resized to h x w, RGB uint8."""
  import cv2  # pylint: disable=g-import-not-at-top
  import imagefactory  # pylint: disable=g-import-not-at-top
  return cv2.resize(imagefactory.sample_rgb(i), (w, h),
                    interpolation=cv2.INTER_AREA)


def assert_same_luminance(out, gray):
  """`out` (H,W,3) uint8 has `gray`'s (H,W) luminance up to rounding."""
  from jaxcolor.color import recombine  # pylint: disable=g-import-not-at-top
  assert out.shape == gray.shape + (3,) and out.dtype == np.uint8
  diff = np.abs(recombine.to_gray(out).astype(int) - gray)
  assert diff.max() <= 1, diff.max()


def has_colour(rgb):
  """Mean distance of RGB uint8 from its own gray (0 for a gray image)."""
  return float(np.abs(rgb.astype(int) - rgb.mean(-1, keepdims=True)).mean())

