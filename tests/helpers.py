"""Shared test helpers: tiny configs, fresh states, steps, runs, main.py.

Test modules import these; no test module imports another.
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import cic_baseline
from configs import scgan_baseline
from configs import tiny
from jaxcolor.runtime import checkpoint
from jaxcolor.runtime import op_profile
from jaxcolor import families
from jaxcolor import trainer
from jaxcolor.modes import train
from jaxcolor.data import pipeline
from jaxcolor.runtime import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES_DIR = os.path.join(ROOT, 'jaxcolor', 'data', 'samples')


# -------------------------------------------------------- compiled programs
def compiled_matmuls(hlo_text):
  """What a compiled CPU program contracts with, op_profile's reading:
  ((result, lhs, rhs) dtypes of each dot, how many matmul fusions XLA handed
  to YNNPACK, how many convolutions are left)."""
  computations, _ = op_profile.parse_hlo(hlo_text)
  ops = {op.name: op for body in computations.values() for op in body}
  dtype = lambda op: op.shape.split('[')[0]  # noqa: E731
  dots = [(dtype(op), *(dtype(ops[name]) for name in op.operands))
          for op in ops.values() if op.opcode == 'dot']
  ynn = sum(op_profile.kind(op, computations) == 'matmul'
            and op_profile.library(op, 'cpu') == 'YNNPACK'
            for op in ops.values())
  convolutions = sum(op.opcode == 'convolution' for op in ops.values())
  return dots, ynn, convolutions


def rel_error(a, b):
  """max |a - b| / max |b|, in float32 (bfloat16 results included)."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))


def dnnl_calls(hlo_text, target='jaxcolor_dnnl_conv_'):
  """(result dtype, pass) of each custom call of the kernel library whose
  target starts with `target` (default: oneDNN's convolutions; e.g.
  'jaxcolor_winograd_') in a compiled program, in program order."""
  return re.findall(r'= (\w+)\[[^=]*custom-call\([^)]*\), '
                    rf'custom_call_target="{target}(\w+)"', hlo_text)


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


# ------------------------------------------------------------------ shared steps
# Compiling the tiny GAN's step is most of the suite's time: tests that step
# the same config on the same layout share one traced and compiled program,
# one fresh state and (`trajectory`) one run, made once per test process.
_TRAIN_FNS = {}
_FRESH_STATES = {}
_BATCHES = {}
_TRAJECTORIES = {}


def config_key(config) -> str:
  """A config as a string: equal strings, equal configs."""
  return json.dumps(config.to_dict(), sort_keys=True, default=repr)


def _layout_key(par):
  return par.kind, tuple(d.id for d in par.mesh.devices.flat)


def shared_train_fn(config, par):
  """(family, `trainer.make_train_fn` of `config` on `par`), made once per
  process for each config and layout."""
  key = (config_key(config), _layout_key(par))
  if key not in _TRAIN_FNS:
    family = families.build(config)
    _TRAIN_FNS[key] = family, trainer.make_train_fn(family, par, config)
  return _TRAIN_FNS[key]


def shared_fresh_state(config, par):
  """A fresh replicated state of `config` on `par`'s devices: a new device
  copy of one host copy made once per process (its init compiled once)."""
  key = config_key(config)
  if key not in _FRESH_STATES:
    _FRESH_STATES[key] = host(fresh_state(config, par)[1])
  return jax.device_put(_FRESH_STATES[key], par.replicated)


def shared_batches(n, config=None):
  """`train_batches(n, config)`, read once per process (do not modify)."""
  config = config or tiny_config()
  key = (config_key(config.data), config.seed)
  have = _BATCHES.get(key, [])
  if len(have) < n:
    _BATCHES[key] = have + train_batches(n, config)[len(have):]
  return _BATCHES[key][:n]


def steps_from_fresh(config, par, batches, start=None):
  """Trains `batches` from a fresh state of `config` through the trainer's
  compiled call (`trainer.make_train_fn`: `config.steps_per_call` batches a
  call), with `shared_train_fn` and `shared_fresh_state`; or, given
  `start` (a host state of `config`), from that state.

  Returns ([host state before the first call, after each call], [host
  metrics of each step]).
  """
  _, fn = shared_train_fn(config, par)
  if start is None:
    state = shared_fresh_state(config, par)
    start = _FRESH_STATES[config_key(config)]
  else:
    state = jax.device_put(start, par.replicated)
  s = par.to_step_layout(state)
  states, metrics = [start], []
  k = config.steps_per_call
  for i in range(0, len(batches), k):
    s, m = fn(s, trainer.put_train_batches(par, batches[i:i + k], config))
    states.append(host(par.from_step_layout(s)))
    metrics.extend(trainer.split_metrics(par.fetch(m), k))
  return states, metrics


def trajectory(config, kind, n):
  """`steps_from_fresh` of `config` on all devices (`kind`: 'pmap' or
  'shard_map') over the first `n` training batches, stepped once per
  process: every test that asks gets the same (states, metrics), a longer
  run continues a shorter one (the same steps on the same bits).

  Returns ([host state fresh, after each call], [host metrics of each
  step]); do not modify them.
  """
  key = (config_key(config), kind)
  states, metrics = _TRAJECTORIES.get(key, (None, []))
  done = len(metrics)
  if n > done:
    more = steps_from_fresh(config, parallel.Parallel.create(kind),
                            shared_batches(n, config)[done:],
                            start=states[-1] if states else None)
    states = (states or [])[:-1] + more[0]  # more[0][0] is states[-1]
    metrics = metrics + more[1]
    _TRAJECTORIES[key] = states, metrics
  k = config.steps_per_call
  return states[:n // k + 1], metrics[:n]


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


def xla_flags(devices: int) -> str:
  """The test session's XLA_FLAGS (conftest.py: its compile settings) with
  `devices` CPU devices, for a process a test starts."""
  count = '--xla_force_host_platform_device_count='
  return ' '.join([f'{count}{devices}'] + [
      f for f in os.environ.get('XLA_FLAGS', '').split()
      if not f.startswith(count)])


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

