"""Baseline 2 (Zhang et al., ECCV 2016): state and per-device steps.

The network sees Lab L (normalised to [-1, 1]) and predicts a distribution
over the 313 in-gamut ab bins at 1/4 resolution; the loss is the
class-rebalanced multinomial cross-entropy against soft-encoded ground truth;
decoding is the annealed mean. The training loop is `jaxcolor.train`'s.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcolor import color
from jaxcolor import losses
from jaxcolor import parallel
from jaxcolor import quantization
from jaxcolor.models import cic

AXIS = parallel.AXIS


@flax.struct.dataclass
class CICState:
  """step, network params + BatchNorm statistics, SGD state, class weights.

  `class_weights` (313,) are the rebalancing weights; constant, but kept in
  the state so a resumed run uses exactly the weights it started with.
  """
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  class_weights: jnp.ndarray
  rng: jnp.ndarray


def make_optimizer(config: ml_collections.ConfigDict):
  """Nesterov SGD, as the paper's baseline."""
  return optax.sgd(config.optim.cic_learning_rate,
                   momentum=config.optim.cic_momentum, nesterov=True)


def build_network(config: ml_collections.ConfigDict) -> cic.CICNet:
  mc = config.model
  return cic.CICNet(widths=tuple(mc.cic_widths),
                    num_convs=tuple(mc.cic_num_convs), axis_name=AXIS,
                    dtype=jnp.dtype(config.dtype))


def lab_input(batch: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
  """uint8 RGB batch -> (Lab (B,H,W,3), normalised L (B,H,W,1) in [-1, 1])."""
  lab = color.rgb_to_lab(color.to_unit_rgb(batch['rgb']))
  return lab, color.normalize_l(lab[..., :1])


def create_state(rng: jax.Array, class_weights: np.ndarray, *,
                 net: cic.CICNet, config: ml_collections.ConfigDict
                 ) -> CICState:
  size = config.data.image_size
  variables = net.init(rng, jnp.zeros((1, size, size, 1), jnp.float32),
                       train=False)
  params = variables['params']
  return CICState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables['batch_stats'],
      opt_state=make_optimizer(config).init(params),
      class_weights=jnp.asarray(class_weights, jnp.float32),
      rng=jax.random.PRNGKey(config.seed + 1))


def train_step(state: CICState, batch: dict, *, net: cic.CICNet,
               bins: np.ndarray, config: ml_collections.ConfigDict):
  """One SGD step on the rebalanced cross-entropy, on this device's batch."""
  lc = config.loss
  lab, x = lab_input(batch)
  soft, pixel_weights = quantization.encode_ab_targets(
      lab[..., 1:], bins, state.class_weights, config.data.image_size // 4,
      k=lc.cic_k, sigma=lc.cic_sigma)

  def objective(params):
    logits, updates = net.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'])
    return losses.cic_loss(logits, soft, pixel_weights), updates

  (loss, updates), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params)
  grads = jax.lax.pmean(grads, AXIS)
  tx = make_optimizer(config)
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, param_updates)
  metrics = jax.lax.pmean({
      'loss': loss, 'grad_norm': optax.global_norm(grads),
      'param_norm': optax.global_norm(params)}, AXIS)
  # BatchNorm averaged its batch statistics over AXIS: all devices agree.
  return state.replace(step=state.step + 1, params=params,
                       batch_stats=updates['batch_stats'],
                       opt_state=opt_state), metrics


def colorize_batch(state: CICState, batch: dict, *, net: cic.CICNet,
                   bins: np.ndarray, config: ml_collections.ConfigDict
                   ) -> dict:
  """Annealed-mean colours on the input's own L: {'fake_rgb'} in [-1, 1]."""
  lab, x = lab_input(batch)
  logits = net.apply({'params': state.params,
                      'batch_stats': state.batch_stats}, x, train=False)
  rgb01 = quantization.decode_rgb(logits, lab[..., :1], bins,
                                  config.model.cic_temperature)
  return {'fake_rgb': rgb01 * 2.0 - 1.0}


def class_weights(config: ml_collections.ConfigDict, train_batches) -> np.ndarray:
  """Rebalancing weights from the ImageNet prior or the training set's.

  `train_batches` is called only for config.loss.cic_prior == 'train' and
  must return an iterable over one epoch of uint8 batches.
  """
  lc = config.loss
  if lc.cic_prior == 'imagenet':
    prior = quantization.load_prior()
  elif lc.cic_prior == 'train':
    to_ab = jax.jit(lambda rgb: color.rgb_to_lab(color.to_unit_rgb(rgb))[..., 1:])
    prior = quantization.prior_from_ab(
        np.asarray(to_ab(b['rgb'])) for b in train_batches())
  else:
    raise ValueError(f"config.loss.cic_prior={lc.cic_prior!r}; expected "
                     "'imagenet' or 'train'")
  return np.asarray(quantization.rebalance_weights(
      prior, lam=lc.cic_lambda, sigma=lc.cic_sigma))


def family_parts(config: ml_collections.ConfigDict, train_batches):
  """(init_args, create_state, train_step, colorize) for `train.Family`."""
  net = build_network(config)
  bins = quantization.load_bins()

  def init_args(config, key):
    return key, class_weights(config, train_batches)

  kwargs = dict(net=net, config=config)
  return (init_args,
          functools.partial(create_state, **kwargs),
          functools.partial(train_step, bins=bins, **kwargs),
          functools.partial(colorize_batch, bins=bins, **kwargs))
