"""The GAN family's optimisers: Adam for G and D, their learning-rate
schedules, and the EMA of the generator's parameters.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# config.optim.g_lr_schedule / d_lr_schedule.
LR_SCHEDULES = ('constant', 'cosine', 'linear')


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
  g_tx = optax.adam(g_lr, b1=o.b1, b2=o.b2)
  d_tx = optax.adam(d_lr, b1=o.b1, b2=o.b2)
  return g_tx, d_tx


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
