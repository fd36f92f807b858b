"""The training state and its compiled step, as train and benchmark use them.

`init_state` builds a family's state on the devices, `make_train_fn` the
compiled call of `config.steps_per_call` steps, `put_train_batches` its
device batch; `check_devices` the one check that needs the devices.
"""

from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from jaxcolor import families
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


def init_state(family: families.Family, par: parallel.Parallel,
               config: ml_collections.ConfigDict,
               data: Optional[pipeline.Data] = None) -> Any:
  """A fresh state, built on the devices already replicated.

  `data` serves families whose init reads the training set (CIC's 'train'
  prior); the ResNet weights file, if any, is read here.
  """
  inputs = family.init_inputs(families.init_key(config.seed), data)
  abstract = jax.eval_shape(family.init, *inputs)
  shardings = jax.tree.map(lambda _: par.replicated, abstract)
  return jax.jit(family.init, out_shardings=shardings)(*inputs)


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
