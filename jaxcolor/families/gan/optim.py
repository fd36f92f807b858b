"""The GAN family's optimisers: Adam for G and D, their learning-rate
schedules, and the EMA of the generator's parameters.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcolor.kernels import adam as adam_kernel
from jaxcolor.kernels import library

# config.optim.g_lr_schedule / d_lr_schedule.
LR_SCHEDULES = ('constant', 'cosine', 'linear')
# config.optim.adam_impl: how an Adam update is computed (same values).
ADAM_IMPLS = ('auto', 'optax', 'kernel')
EPS = 1e-8  # optax.adam's


def decay_steps(config: ml_collections.ConfigDict) -> int:
  """Steps over which a decaying schedule falls to its end value.

  optim.decay_steps, else num_train_steps; a run given in epochs
  (num_train_steps -1) has its length set by train before the step is built.
  """
  return int(config.optim.decay_steps or config.num_train_steps)


def learning_rate(config: ml_collections.ConfigDict, peak: float, kind: str):
  """A learning rate for optax: the float `peak` (the paper: constant, no
  warmup) or an optax schedule of the step.

  optim.warmup_steps rises linearly from 0 to `peak`; then 'constant' stays,
  'cosine' (optax.warmup_cosine_decay_schedule) and 'linear' fall to
  peak * optim.end_lr_fraction at `decay_steps(config)`.
  """
  o = config.optim
  warmup = int(o.warmup_steps)
  if kind == 'constant' and not warmup:
    return peak
  end = peak * float(o.end_lr_fraction)
  if kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, decay_steps(config), end)
  if kind == 'constant':
    after = optax.constant_schedule(peak)
  else:
    after = optax.linear_schedule(peak, end, decay_steps(config) - warmup)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def learning_rates(config: ml_collections.ConfigDict):
  """(generator's, critic's) learning rate: floats or optax schedules."""
  o = config.optim
  return (learning_rate(config, o.g_learning_rate, o.g_lr_schedule),
          learning_rate(config, o.d_learning_rate, o.d_lr_schedule))


def make_optimizers(config: ml_collections.ConfigDict, g_lr, d_lr):
  """Adam for the generator and for the critic, at the rates of
  `learning_rates(config)`: (g_tx, d_tx)."""
  o = config.optim
  g_tx = optax.adam(g_lr, b1=o.b1, b2=o.b2, eps=EPS)
  d_tx = optax.adam(d_lr, b1=o.b1, b2=o.b2, eps=EPS)
  return g_tx, d_tx


def resolve_adam_impl(name: str, parallel: str) -> str:
  """config.optim.adam_impl -> 'optax' or 'kernel', for config.parallel.

  'auto' is 'kernel' on CPUs where the kernel library loads and the step is
  compiled with shard_map (one pass over memory instead of XLA CPU's
  copies: jaxcolor/kernels/adam.py), 'optax' elsewhere: under pmap XLA
  copies the kernel's in-place results once more (docs/benchmarks.md).
  ValueError for an unknown name or a 'kernel' this process cannot run.
  """
  if name not in ADAM_IMPLS:
    raise ValueError(f'config.optim.adam_impl={name!r}; expected one of '
                     f'{ADAM_IMPLS}')
  if name == 'optax':
    return name
  why = library.why_unavailable()
  if name == 'kernel' and why:
    raise ValueError(f"config.optim.adam_impl='kernel': {why}")
  if why or (name == 'auto' and parallel != 'shard_map'):
    return 'optax'
  return 'kernel'


def apply_update(tx: optax.GradientTransformation, lr,
                 config: ml_collections.ConfigDict, grads, params, opt_state):
  """One update of `tx` (`make_optimizers`' Adam at rate `lr`): (new
  params, new optimiser state), the values of tx.update and
  optax.apply_updates up to float32 rounding, computed as
  config.optim.adam_impl says."""
  o = config.optim
  impl = resolve_adam_impl(o.get('adam_impl', 'auto'),
                           config.get('parallel', 'pmap'))
  if impl == 'optax':
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  adam_state, lr_state = opt_state
  count = optax.safe_increment(adam_state.count)
  params, mu, nu = adam_kernel.update(
      params, adam_state.mu, adam_state.nu, grads,
      lr=lr_at(lr, adam_state.count), count=count, b1=o.b1, b2=o.b2, eps=EPS)
  # The rate's own state (a schedule's count) advances as in optax.
  _, lr_state = optax.scale_by_learning_rate(lr).update({}, lr_state)
  return params, (optax.ScaleByAdamState(count=count, mu=mu, nu=nu),
                  lr_state)


def lr_at(lr, step: jnp.ndarray) -> jnp.ndarray:
  """The learning rate of update number `step` (0-based), float32."""
  return jnp.asarray(lr(step) if callable(lr) else lr, jnp.float32)


# ------------------------------------------------------------------ EMA
def ema_enabled(config: ml_collections.ConfigDict) -> bool:
  return float(config.optim.ema_decay) > 0.0


def ema_decay_at(optim_config, step: jnp.ndarray) -> jnp.ndarray:
  """The decay of update number `step` (0-based).

  optim.ema_decay, or with optim.ema_warmup min(ema_decay,
  (1 + step) / (10 + step)) (tf.train.ExponentialMovingAverage's
  num_updates rule), so a short run's average is not dominated by the
  initial weights.
  """
  decay = jnp.float32(optim_config.ema_decay)
  if optim_config.ema_warmup:
    t = step.astype(jnp.float32)
    decay = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return decay


def update_ema(ema: Any, params: Any, decay: jnp.ndarray) -> Any:
  """decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
