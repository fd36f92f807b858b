"""The CIC family: Zhang et al. (ECCV 2016), the paper's baseline 2.

The network sees Lab L (normalised to [-1, 1]) and predicts a distribution
over the 313 in-gamut ab bins at 1/4 resolution; the loss is the
class-rebalanced multinomial cross-entropy against soft-encoded ground truth;
decoding is the annealed mean. Config: configs/cic_baseline.py.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcolor import families
from jaxcolor import losses
from jaxcolor.color import ab_bins
from jaxcolor.color import cielab
from jaxcolor.color import ycrcb
from jaxcolor.models import cic
from jaxcolor.runtime import parallel

AXIS = parallel.AXIS
PRIORS = ('imagenet', 'train')


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
  return optax.sgd(config.optim.learning_rate,
                   momentum=config.optim.momentum, nesterov=True)


def build_network(config: ml_collections.ConfigDict) -> cic.CICNet:
  mc = config.model
  return cic.CICNet(widths=tuple(mc.widths), num_convs=tuple(mc.num_convs),
                    axis_name=AXIS, dtype=jnp.dtype(config.dtype))


def lab_input(rgb: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """uint8 RGB (B,H,W,3) -> (Lab (B,H,W,3), normalised L (B,H,W,1) in [-1, 1])."""
  lab = cielab.rgb_to_lab(cielab.to_unit_rgb(rgb))
  return lab, cielab.normalize_l(lab[..., :1])


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
  """One SGD step on the rebalanced cross-entropy, on this device's batch.

  With config.grad_accum_steps = k > 1: the mean gradient of k
  micro-batches (B/k each, one after another), BatchNorm's statistics
  updated by each micro-batch in turn.
  """
  k = config.get('grad_accum_steps', 1)

  def micro_step(carry, micro_batch):
    grads, batch_stats = carry
    (loss, batch_stats), g = _loss_and_grads(
        state.params, batch_stats, state.class_weights, micro_batch,
        net=net, bins=bins, config=config)
    return (jax.tree.map(jnp.add, grads, g), batch_stats), loss

  if k == 1:
    (loss, batch_stats), grads = _loss_and_grads(
        state.params, state.batch_stats, state.class_weights, batch, net=net,
        bins=bins, config=config)
  else:
    micro = jax.tree.map(
        lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    unroll = k if jax.default_backend() == 'cpu' else 1  # see trainer
    (grads, batch_stats), micro_losses = jax.lax.scan(
        micro_step, (zeros, state.batch_stats), micro, unroll=unroll)
    grads = jax.tree.map(lambda g: g / k, grads)
    loss = jnp.mean(micro_losses)
  grads = parallel.pmean(grads)
  tx = make_optimizer(config)
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, param_updates)
  metrics = parallel.pmean({
      'loss': loss, 'grad_norm': optax.global_norm(grads),
      'param_norm': optax.global_norm(params)})
  # BatchNorm averaged its batch statistics over AXIS: all devices agree.
  return state.replace(step=state.step + 1, params=params,
                       batch_stats=batch_stats,
                       opt_state=opt_state), metrics


def _loss_and_grads(params, batch_stats, class_weights, batch, *, net, bins,
                    config):
  """((loss, updated batch_stats), d loss / d params) on one batch."""
  lc = config.loss
  lab, x = lab_input(batch['rgb'])
  soft, pixel_weights = ab_bins.encode_ab_targets(
      lab[..., 1:], bins, class_weights, config.data.image_size // 4,
      k=lc.soft_encoding_k, sigma=lc.soft_encoding_sigma)

  def objective(params):
    logits, updates = net.apply(
        {'params': params, 'batch_stats': batch_stats}, x, train=True,
        mutable=['batch_stats'])
    return losses.cic_loss(logits, soft, pixel_weights), updates

  (loss, updates), grads = jax.value_and_grad(objective, has_aux=True)(params)
  return (loss, updates['batch_stats']), grads


def decode(params: dict, rgb: jnp.ndarray, *, net: cic.CICNet,
           bins: np.ndarray, temperature: float) -> jnp.ndarray:
  """Annealed-mean colours on the L of uint8 `rgb`: RGB (B,H,W,3) in [0, 1]."""
  lab, x = lab_input(rgb)
  logits = net.apply(params, x, train=False)
  return ab_bins.decode_rgb(logits, lab[..., :1], bins, temperature)


def class_weights(config: ml_collections.ConfigDict, train_batches) -> np.ndarray:
  """Rebalancing weights from the ImageNet prior or the training set's.

  `train_batches` is called only for config.loss.prior == 'train' and must
  return an iterable over one epoch of uint8 batches.
  """
  lc = config.loss
  if lc.prior == 'imagenet':
    prior = ab_bins.load_prior()
  elif lc.prior == 'train':
    to_ab = jax.jit(
        lambda rgb: cielab.rgb_to_lab(cielab.to_unit_rgb(rgb))[..., 1:])
    prior = ab_bins.prior_from_ab(
        np.asarray(to_ab(b['rgb'])) for b in train_batches())
  else:
    raise ValueError(f'config.loss.prior={lc.prior!r}; expected one of '
                     f'{PRIORS}')
  return np.asarray(ab_bins.rebalance_weights(
      prior, lam=lc.rebalance_lambda, sigma=lc.soft_encoding_sigma))


# Renamed when CIC got a config of its own (old key -> new key).
_RENAMED = {
    'model': {'cic_widths': 'widths', 'cic_num_convs': 'num_convs',
              'cic_temperature': 'temperature'},
    'loss': {'cic_k': 'soft_encoding_k', 'cic_sigma': 'soft_encoding_sigma',
             'cic_lambda': 'rebalance_lambda', 'cic_prior': 'prior'},
    'optim': {'cic_learning_rate': 'learning_rate', 'cic_momentum': 'momentum'},
}
_KEEP = {'model': ('name',)}


class CICFamily(families.Family):
  """Zhang et al.'s 313-bin classifier ('cic')."""
  accumulates_gradients = True
  inference_keys = ('params', 'batch_stats')

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.net = build_network(config)
    self.bins = ab_bins.load_bins()

  @classmethod
  def upgrade_config(cls, saved: dict) -> dict:
    """Older CIC configs carried the GAN's keys and cic_-prefixed ones."""
    if not any(old in saved.get(section, {})
               for section, names in _RENAMED.items() for old in names):
      return saved
    for section, names in _RENAMED.items():
      old = saved.get(section, {})
      saved[section] = {**{k: old[k] for k in _KEEP.get(section, ())
                           if k in old},
                        **{new: old[o] for o, new in names.items() if o in old}}
    saved.pop('reuse_generator_forward', None)
    return saved

  def validate(self) -> None:
    super().validate()
    size = int(self.config.data.image_size)
    if size % cic.DOWNSAMPLE:
      d = cic.DOWNSAMPLE
      raise ValueError(
          f'config.data.image_size={size}: the CIC network halves the side '
          f'3 times and predicts ab at 1/{cic.OUTPUT_STRIDE} of it, so it '
          f'takes multiples of {d} ({d * 8}, {d * 16}, {d * 24}, {d * 32}, '
          '...; 256, ab at 64x64, is Zhang et al.\'s own)')
    if self.config.data.get('use_feature_cache', False):
      self.featurizer()  # raises: CIC caches nothing

  def abstract_init_inputs(self, key):
    return key, jax.ShapeDtypeStruct((ab_bins.NUM_BINS,), jnp.float32)

  def init_inputs(self, key, data=None):
    """(key, class weights); the 'train' prior makes a pass over `data`."""
    def one_epoch():
      if data is None:
        raise ValueError("config.loss.prior='train' needs the training data "
                         '(config.data.train_dir or prepared_dir)')
      return data.one_epoch()
    return key, class_weights(self.config, one_epoch)

  def init(self, rng, weights):
    return create_state(rng, weights, net=self.net, config=self.config)

  def parameter_trees(self, state):
    return {'network': state.params}

  def train_step(self, state, batch):
    return train_step(state, batch, net=self.net, bins=self.bins,
                      config=self.config)

  def colorize(self, state, batch):
    """Annealed-mean colours on the photo's own L: {'fake_rgb'} in [-1, 1]."""
    rgb01 = decode({'params': state.params, 'batch_stats': state.batch_stats},
                   batch['rgb'], net=self.net, bins=self.bins,
                   temperature=self.config.model.temperature)
    return {'fake_rgb': rgb01 * 2.0 - 1.0}

  def predict(self, params, inputs):
    """The chroma of the annealed-mean colours (RGB through Lab, which
    keeps them in the cube), in 8-bit YCrCb offsets."""
    # L of the gray photo as RGB (R = G = B). Training saw the colour
    # photo's L, which differs slightly from the L of its BT.601 gray.
    rgb01 = decode(params, jnp.repeat(inputs['gray'], 3, axis=-1),
                   net=self.net, bins=self.bins,
                   temperature=self.config.model.temperature)
    return ycrcb.chroma_from_rgb(rgb01 * 255.0)

  @classmethod
  def report_figures(cls, get, config):
    del config
    return [{'file': 'losses.png', 'title': 'training loss', 'panels': [
        ({'loss': get('train/loss')}, 'rebalanced cross-entropy', 'loss')]}]
