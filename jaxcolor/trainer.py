"""The training state and its compiled step, as train and benchmark use them.

`init_state` builds a family's state on the devices (fresh, or fine-tuned
from a `read_source` model), `make_train_fn` the compiled call of
`config.steps_per_call` steps, `put_train_batches` its device batch;
`check_devices` the one check that needs the devices.
"""

import dataclasses
from typing import Any, Callable, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from jaxcolor import families
from jaxcolor import inference
from jaxcolor.data import pipeline
from jaxcolor.runtime import parallel


# ------------------------------------------------------------------ set-up
def check_devices(config: ml_collections.ConfigDict) -> None:
  """Clear errors for batches that cannot split over the devices (the
  config's own ranges are `config_check.check`'s)."""
  b = config.data.batch_size
  per_process = b // jax.process_count()
  if b % jax.process_count() or per_process % jax.local_device_count():
    raise ValueError(
        f'config.data.batch_size={b} must split evenly over '
        f'{jax.process_count()} process(es) x {jax.local_device_count()} '
        'local device(s)')
  k = config.get('grad_accum_steps', 1)
  per_device = per_process // jax.local_device_count()
  if per_device % k:
    raise ValueError(
        f'config.data.batch_size={b} gives {per_device} example(s) per '
        f'device, which do not split into config.grad_accum_steps={k} '
        'micro-batches')
  eb = config.data.eval_batch_size
  if eb % jax.device_count():
    raise ValueError(f'config.data.eval_batch_size={eb} must be a multiple of '
                     f'the {jax.device_count()} devices')


def num_train_steps(config: ml_collections.ConfigDict,
                    data: pipeline.Data) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  n = data.num_examples('train')
  steps = config.num_epochs * n // config.data.batch_size
  if steps <= 0:
    raise ValueError(
        f'{n} training examples give no full batch of {config.data.batch_size};'
        ' lower config.data.batch_size or add images')
  return steps


def family_and_data(config: ml_collections.ConfigDict
                    ) -> tuple[families.Family, pipeline.Data]:
  """The run's model family and its data (resolved once), checked against
  each other before any work."""
  family = families.build(config)
  data = pipeline.Data.create(config, process_index=jax.process_index(),
                              process_count=jax.process_count())
  family.check_data(None, data)
  return family, data


# ------------------------------------------------------------------ state
def abstract_state(family: families.Family, par: parallel.Parallel) -> Any:
  """The state's shapes with replicated shardings; reads no file."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=par.replicated),
      family.abstract_state(families.init_key(family.config.seed)))


@dataclasses.dataclass(frozen=True)
class Source:
  """A saved model a run starts from (config.init_from).

  Attributes:
    path: as config.init_from names it.
    read: the bundle or checkpoint folder read.
    config: its config (today's keys).
    tree: its arrays as numpy (`Family.init_from_source`'s `source`).
    step: the step it was trained to.
  """
  path: str
  read: str
  config: ml_collections.ConfigDict
  tree: dict = dataclasses.field(repr=False)
  step: int


def _shapes(tree: Any) -> dict[str, tuple]:
  """{'a/b/c': shape} of a tree's arrays (ShapeDtypeStructs too)."""
  return {jax.tree_util.keystr(p, simple=True, separator='/'):
          tuple(x.shape if hasattr(x, 'shape') else np.shape(x))
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def read_source(family: families.Family, path: str) -> Source:
  """The model at `path` (config.init_from), checked against `family`'s
  state before any work: same config.model.name, same shapes of every
  array taken over.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: it is no model, a damaged one, another model, or one whose
      arrays differ from this run's (the keys that differ, one a line).
  """
  try:
    # The only family code the saved config may name is this run's own.
    config, tree, step, read = inference.read_model(
        path, family.init_from_keys, allowed_families=(family.name,))
  except FileNotFoundError as e:
    raise FileNotFoundError(f'config.init_from: {e}') from e
  except ValueError as e:
    raise ValueError(f'config.init_from: {e}') from e
  name = config.get('model', {}).get('name')
  if name != family.name:
    raise ValueError(
        f'config.init_from={path!r} is a {name!r} model and this run trains '
        f'{family.name!r} (config.model.name): fine-tuning starts from a '
        'model of the same kind')
  # The take-over applied to the state's shapes: every array it brings
  # must have the shape this run's state has there, and none may be
  # missing or extra.
  want = family.abstract_state()
  want_shapes = _shapes(want)
  have = _shapes(family.init_from_source(want, tree)[0])
  diffs = [f'  {k}: missing' for k in sorted(set(want_shapes) - set(have))]
  diffs += [f'  {k}: not in this run\'s model'
            for k in sorted(set(have) - set(want_shapes))]
  diffs += [f'  {k}: source {have[k]}, this run {want_shapes[k]}'
            for k in sorted(set(want_shapes) & set(have))
            if have[k] != want_shapes[k]]
  if diffs:
    shown = diffs[:12] + ([f'  ... and {len(diffs) - 12} more']
                          if len(diffs) > 12 else [])
    raise ValueError(
        f'config.init_from={path!r}: its arrays do not match the '
        f'{family.name!r} model this config builds (other model settings, '
        'e.g. widths or the ResNet branch):\n' + '\n'.join(shown))
  return Source(path=path, read=read, config=config, tree=tree, step=step)


def init_state(family: families.Family, par: parallel.Parallel,
               config: ml_collections.ConfigDict,
               data: Optional[pipeline.Data] = None,
               source: Optional[Source] = None) -> Any:
  """A fresh state, built on the devices already replicated.

  `data` serves families whose init reads the training set (CIC's 'train'
  prior); the ResNet weights file, if any, is read here. With a `source`
  (from `read_source`), the fields `Family.init_from_source` takes over
  hold its arrays; the optimiser states, step (0) and rng stay fresh.
  """
  inputs = family.init_inputs(families.init_key(config.seed), data)
  state = jax.jit(family.init, out_shardings=par.replicated)(*inputs)
  if source is None:
    return state
  merged, what = family.init_from_source(state, source.tree)

  def place(fresh, new):
    if new is fresh:
      return fresh
    return jax.device_put(np.asarray(new, fresh.dtype), fresh.sharding)
  state = jax.tree.map(place, state, merged)
  logging.info('Fine-tuning from %s (%s, step %d): %s; fresh optimisers, '
               'from step 0.', source.read, source.config.model.name,
               source.step, what)
  return state


# ------------------------------------------------------------------ compile
def make_train_fn(family: families.Family, par: parallel.Parallel,
                  config: ml_collections.ConfigDict) -> Callable:
  """The compiled training call: (step_state, device batch) -> (state, metrics).

  With `config.steps_per_call = k > 1` one call runs k steps (`lax.scan`)
  on k stacked batches from `put_train_batches`, and each metric comes
  back as a (k,) array, one entry per step; with k = 1, as a scalar.
  """
  k = config.steps_per_call
  if k == 1:
    return par.compile(family.train_step, donate_state=config.donate_state)

  # XLA's CPU compiler leaves convolutions inside a while loop in the
  # layouts autodiff gives them and runs those many times slower, so on CPUs
  # the k steps are unrolled into one straight program (longer compile).
  unroll = k if jax.default_backend() == 'cpu' else 1

  def k_steps(state, batches):
    return jax.lax.scan(family.train_step, state, batches, unroll=unroll)
  return par.compile(k_steps, donate_state=config.donate_state, stacked=True)


def put_train_batches(par: parallel.Parallel, host_batches: list[dict],
                      config: ml_collections.ConfigDict) -> dict:
  """`config.steps_per_call` host batches -> the device batch of one call."""
  if len(host_batches) != config.steps_per_call:
    raise ValueError(f'{len(host_batches)} batches for a call of '
                     f'{config.steps_per_call} steps')
  if config.steps_per_call == 1:
    return par.put_batch(host_batches[0])
  stacked = {key: np.stack([b[key] for b in host_batches])
             for key in host_batches[0]}
  return par.put_batch(stacked, stacked=True)


def split_metrics(metrics: dict, steps: int) -> list[dict]:
  """Host metrics of one call -> one dict per step (scalars)."""
  if steps == 1:
    return [metrics]
  return [{key: v[i] for key, v in metrics.items()} for i in range(steps)]
