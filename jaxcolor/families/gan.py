"""The GAN family: the paper's edge/saliency-guided model and SCGAN.

One family, two configs (configs/default.py, configs/scgan_baseline.py):
a U-Net generator on gray (+ Canny edge) emitting RGB (+ saliency), an
optional frozen ResNet-18 fused into it, and a PatchGAN critic. Here: the
train state, the model's inputs, `generate`, the training step (read it
aloud), the inference apply, and the ResNet side of the feature cache.

Images inside are float32 in [-1, 1]; batches arrive as the pipeline's
uint8 maps.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcolor import families
from jaxcolor import losses
from jaxcolor import models as models_lib
from jaxcolor import parallel
from jaxcolor.data import feature_cache
from jaxcolor.data import preprocess
from jaxcolor.models import resnet18

AXIS = parallel.AXIS


# ------------------------------------------------------------------ state
@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, number of completed steps.
    g_params: {'generator': ...} plus {'resnet': ...} when the ResNet branch
      is trained (config.model.freeze_resnet=False).
    g_opt_state: optax state for g_params.
    d_params: the critic's params.
    d_opt_state: optax state for d_params.
    resnet: frozen ResNet-18 variables ({'params', 'batch_stats'}), only
      {'batch_stats'} when the branch is trained, None without the branch.
      Never updated by the optimisers.
    rng: raw threefry key (uint32[2]), folded with the step each step.
  """
  step: jnp.ndarray
  g_params: Any
  g_opt_state: Any
  d_params: Any
  d_opt_state: Any
  resnet: Any
  rng: jnp.ndarray

  def resnet_variables(self) -> Any:
    return resnet_variables(self.g_params, self.resnet)


def resnet_variables(g_params: Any, resnet: Any) -> Any:
  """The ResNet's full {'params', 'batch_stats'}, wherever its params live."""
  if resnet is None:
    return None
  if 'resnet' in g_params:
    return {'params': g_params['resnet'], **resnet}
  return resnet


def make_optimizers(config: ml_collections.ConfigDict):
  """Adam for the generator and for the critic: (g_tx, d_tx)."""
  o = config.optim
  g_tx = optax.adam(o.g_learning_rate, b1=o.b1, b2=o.b2)
  d_tx = optax.adam(o.d_learning_rate, b1=o.b1, b2=o.b2)
  return g_tx, d_tx


def generator_input_channels(model_config) -> int:
  return 1 + int(model_config.use_edge)


def create_train_state(rng: jax.Array, resnet: Any, *,
                       models: models_lib.Models,
                       config: ml_collections.ConfigDict) -> TrainState:
  """A fresh state (pure; jit it with output shardings).

  Args:
    rng: typed PRNG key (`families.init_key(seed)`).
    resnet: ResNet-18 variables (loaded or random), or None when
      config.model.use_resnet is False.
    models: from `jaxcolor.models.build_models(config.model)`.
    config: the full config.
  """
  mc = config.model
  size = config.data.image_size
  g_rng, d_rng = jax.random.split(rng)
  x = jnp.zeros((1, size, size, generator_input_channels(mc)), jnp.float32)
  feats = None
  if mc.use_resnet:
    feats = jnp.zeros((1, mc.fusion_size, mc.fusion_size, 512), jnp.float32)
  g_params = {'generator': models.generator.init(g_rng, x, feats)['params']}
  critic_in = jnp.zeros((1, size, size, 4), jnp.float32)
  d_params = models.critic.init(d_rng, critic_in)['params']

  frozen = None
  if mc.use_resnet:
    if mc.freeze_resnet:
      frozen = resnet
    else:
      g_params['resnet'] = resnet['params']
      frozen = {k: v for k, v in resnet.items() if k != 'params'}

  g_tx, d_tx = make_optimizers(config)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params, g_opt_state=g_tx.init(g_params),
      d_params=d_params, d_opt_state=d_tx.init(d_params),
      resnet=frozen, rng=jax.random.PRNGKey(config.seed + 1))


# ------------------------------------------------------------------ the model
def model_inputs(batch: dict[str, jnp.ndarray], model_config) -> dict:
  """uint8 batch -> float32 in [-1, 1]: gray, the generator's input, targets.

  Returns dict with 'gray' (B,H,W,1), 'x' (B,H,W,1|2: gray [+ edge]), and,
  when the batch has them, 'rgb' (B,H,W,3), 'saliency' (B,H,W,1) and the
  cached 'resnet_features' (B,f,f,512) as float32.
  """
  gray = preprocess.normalize(batch['gray'])
  x = gray
  if model_config.use_edge:
    x = jnp.concatenate([gray, preprocess.normalize(batch['edge'])], axis=-1)
  inputs = {'gray': gray, 'x': x}
  for key in ('rgb', 'saliency'):
    if key in batch:
      inputs[key] = preprocess.normalize(batch[key])
  if feature_cache.KEY in batch:
    inputs[feature_cache.KEY] = batch[feature_cache.KEY].astype(jnp.float32)
  return inputs


def generate(g_params, resnet_vars, inputs, *, models, model_config):
  """G(gray ⊕ edge, ResNet features) -> (B, H, W, 3 [+1]) in [-1, 1].

  A frozen ResNet (its params outside g_params) gets no gradient; cached
  features in `inputs` (feature_cache.KEY) replace it.
  """
  feats = None
  if model_config.use_resnet and feature_cache.KEY in inputs:
    feats = inputs[feature_cache.KEY]
  elif model_config.use_resnet:
    if 'resnet' in g_params:
      resnet_vars = {**resnet_vars, 'params': g_params['resnet']}
    else:
      resnet_vars = jax.lax.stop_gradient(resnet_vars)
    feats = resnet18.fusion_features(
        models.resnet, resnet_vars, inputs['gray'],
        input_size=model_config.resnet_input_size,
        fusion_size=model_config.fusion_size)
  return models.generator.apply({'params': g_params['generator']},
                                inputs['x'], feats)


def split_output(out, model_config):
  """(B,H,W,C_out) -> (rgb (B,H,W,3), saliency (B,H,W,1) or None)."""
  if model_config.saliency_head:
    return out[..., :3], out[..., 3:4]
  return out, None


def critic_apply(models, d_params, gray, rgb):
  """D(gray ⊕ rgb) -> (B, h, w, 1) patch probabilities."""
  return models.critic.apply({'params': d_params},
                             jnp.concatenate([gray, rgb], axis=-1))


# ------------------------------------------------------------------ the step
def train_step(state: TrainState, batch: dict, *,
               models: models_lib.Models, config: ml_collections.ConfigDict):
  """One critic update, then one generator update, on this device's batch."""
  mc, lw = config.model, config.loss
  g_tx, d_tx = make_optimizers(config)
  inputs = model_inputs(batch, mc)
  gray, real_rgb, real_sal = inputs['gray'], inputs['rgb'], inputs['saliency']

  def generate_from(g_params):
    return generate(g_params, state.resnet_variables(), inputs, models=models,
                    model_config=mc)

  if mc.reuse_generator_forward:
    # The generator runs once; its VJP serves the generator update below.
    fake, generator_vjp = jax.vjp(generate_from, state.g_params)
  else:
    fake = generate_from(state.g_params)
  fake_rgb, _ = split_output(fake, mc)

  # 1. Critic: D = E[D(fake)] - E[D(real)], with the generator held fixed.
  def critic_objective(d_params):
    d_real = critic_apply(models, d_params, gray, real_rgb)
    d_fake = critic_apply(models, d_params, gray,
                          jax.lax.stop_gradient(fake_rgb))
    loss = losses.critic_loss(d_real, d_fake)
    if lw.gradient_penalty_weight:
      rng = jax.random.fold_in(state.rng, jax.lax.axis_index(AXIS))
      loss += lw.gradient_penalty_weight * losses.gradient_penalty(
          lambda x: models.critic.apply({'params': d_params}, x), gray,
          real_rgb, jax.lax.stop_gradient(fake_rgb), rng)
    return loss, (jnp.mean(d_real), jnp.mean(d_fake))

  (d_loss, (d_real_mean, d_fake_mean)), d_grads = jax.value_and_grad(
      critic_objective, has_aux=True)(state.d_params)
  d_grads = jax.lax.pmean(d_grads, AXIS)
  d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state,
                                       state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  # 2. Generator: L1 + GAN (against the updated critic) + saliency-L1.
  def generator_objective(fake):
    fake_rgb, fake_sal = split_output(fake, mc)
    d_fake = critic_apply(models, d_params, gray, fake_rgb)
    return losses.generator_losses(
        fake_rgb, fake_sal, real_rgb, real_sal, d_fake,
        l1_weight=lw.l1_weight, gan_weight=lw.gan_weight,
        saliency_weight=lw.saliency_weight)

  if mc.reuse_generator_forward:
    (g_loss, parts), d_out = jax.value_and_grad(
        generator_objective, has_aux=True)(fake)
    (g_grads,) = generator_vjp(d_out)
  else:
    (g_loss, parts), g_grads = jax.value_and_grad(
        lambda p: generator_objective(generate_from(p)), has_aux=True)(
            state.g_params)
  g_grads = jax.lax.pmean(g_grads, AXIS)
  g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state,
                                       state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)

  metrics = {
      'g_loss': g_loss, 'd_loss': d_loss, **parts,
      'd_real': d_real_mean, 'd_fake': d_fake_mean,
      'g_grad_norm': optax.global_norm(g_grads),
      'd_grad_norm': optax.global_norm(d_grads),
      # Non-finite parameters must be caught before they are checkpointed.
      'g_param_norm': optax.global_norm(g_params),
      'd_param_norm': optax.global_norm(d_params),
  }
  metrics = jax.lax.pmean(metrics, AXIS)
  new_state = state.replace(
      step=state.step + 1, g_params=g_params, g_opt_state=g_opt_state,
      d_params=d_params, d_opt_state=d_opt_state,
      rng=jax.random.fold_in(state.rng, state.step))
  return new_state, metrics


def colorize_batch(state: TrainState, batch: dict, *,
                   models: models_lib.Models,
                   config: ml_collections.ConfigDict) -> dict:
  """G's output for a batch: {'fake_rgb' (B,H,W,3) [, 'fake_saliency']}."""
  mc = config.model
  fake = generate(state.g_params, state.resnet_variables(),
                  model_inputs(batch, mc), models=models, model_config=mc)
  fake_rgb, fake_sal = split_output(fake, mc)
  out = {'fake_rgb': fake_rgb}
  if fake_sal is not None:
    out['fake_saliency'] = fake_sal
  return out


def predict(params: dict, inputs: dict, *, models: models_lib.Models,
            model_config) -> jax.Array:
  """{'g_params', 'resnet'} + uint8 {'gray'[, 'edge']} -> RGB in [0, 1]."""
  out = generate(params['g_params'], params.get('resnet'),
                 model_inputs(inputs, model_config), models=models,
                 model_config=model_config)
  rgb, _ = split_output(out, model_config)
  return jnp.clip((rgb + 1.0) * 0.5, 0.0, 1.0)


# ------------------------------------------------------------------ feature cache
@functools.lru_cache(maxsize=None)
def _features_fn(input_size: int, fusion_size: int):
  """Jitted (ResNet variables, uint8 gray (B,S,S,1)) -> float32 features."""
  # The live branch's module in float32 training (and its features are
  # float32 whatever the compute dtype).
  resnet = resnet18.ResNet18()

  def features(variables, gray):
    return resnet18.fusion_features(
        resnet, variables, preprocess.normalize(gray), input_size=input_size,
        fusion_size=fusion_size)
  return jax.jit(features)


class Featurizer:
  """Adds the frozen ResNet's fusion features to examples, in batches.

  `add(name, example)` and `finish()` return the (name, example) pairs whose
  features are ready, in the order they were added; each example gains
  feature_cache.KEY: (f, f, 512) in the cache dtype. One batch is in flight
  on the device while the next is gathered. The features are those of the
  live branch (`resnet18.fusion_features` in float32 on the same gray map);
  the only difference is the rounding to the cache dtype.
  """
  BATCH_SIZE = 64  # examples per ResNet call
  TAIL_MULTIPLE = 8  # a split's last batch is padded to a multiple of this

  def __init__(self, variables: Any, metadata: dict, input_size: int,
               fusion_size: int):
    self.variables = variables
    self.metadata = metadata
    self._features = _features_fn(input_size, fusion_size)
    self._pending = []
    self._in_flight = None

  def add(self, name: str, example: dict[str, np.ndarray]
          ) -> list[tuple[str, dict[str, np.ndarray]]]:
    self._pending.append((name, example))
    if len(self._pending) < self.BATCH_SIZE:
      return []
    return self._dispatch()

  def finish(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    ready = self._dispatch() if self._pending else []
    return ready + self._collect()

  def _dispatch(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Starts the pending batch; returns the previous one's examples."""
    batch, self._pending = self._pending, []
    gray = np.stack([e['gray'] for _, e in batch])
    pad = (-len(batch) % self.TAIL_MULTIPLE
           if len(batch) < self.BATCH_SIZE else 0)
    gray = np.concatenate([gray, np.zeros((pad,) + gray.shape[1:],
                                          gray.dtype)])
    started = (batch, self._features(self.variables, gray))  # asynchronous
    ready = self._collect()
    self._in_flight = started
    return ready

  def _collect(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    if self._in_flight is None:
      return []
    batch, feats = self._in_flight
    self._in_flight = None
    feats = feature_cache.cast(feats, self.metadata['dtype'])
    return [(name, {**example, feature_cache.KEY: feats[i]})
            for i, (name, example) in enumerate(batch)]


# ------------------------------------------------------------------ the family
# Keys that left the model section's GAN-free configs or moved into it.
_MOVED_TO_MODEL = ('reuse_generator_forward',)


class GANFamily(families.Family):
  """The proposed model ('edge_saliency_gan') and SCGAN ('scgan')."""
  inference_keys = ('g_params', 'resnet')
  console_metrics = ('g_loss', 'l1', 'gan', 'saliency', 'd_loss')
  resume_may_differ = ('model.conv_impl', 'model.resnet18_weights',
                       'model.require_resnet18_weights',
                       'model.reuse_generator_forward')

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.models = models_lib.build_models(
        config.model, dtype=families.compute_dtype(config))
    # Inference runs float32 whatever the training dtype.
    self._inference_models = models_lib.build_models(config.model)

  @classmethod
  def upgrade_config(cls, saved: dict) -> dict:
    for key in _MOVED_TO_MODEL:
      if key in saved:
        saved['model'].setdefault(key, saved.pop(key))
    saved['model'].setdefault('reuse_generator_forward', True)
    return saved

  @classmethod
  def benchmark_config(cls, config):
    """Speed does not depend on the ResNet's weights: a random branch."""
    mc = config.model
    if not (mc.use_resnet and mc.require_resnet18_weights and
            not mc.resnet18_weights):
      return config, []
    config = config.copy_and_resolve_references()
    config.model.require_resnet18_weights = False
    return config, ['no ResNet-18 weights given: measured with a randomly '
                    'initialised branch (the speed is the same)']

  def validate(self) -> None:
    super().validate()
    mc = self.config.model
    if self.config.data.get('use_feature_cache', False):
      if not mc.use_resnet:
        raise ValueError('config.data.use_feature_cache=True needs the '
                         'ResNet branch, but config.model.use_resnet is '
                         'False; set use_feature_cache=False')
      if not mc.freeze_resnet:
        raise ValueError(
            'config.data.use_feature_cache=True needs a frozen ResNet branch '
            '(cached features cannot follow a trained ResNet), but '
            'config.model.freeze_resnet is False; set one of them the other '
            'way')

  # ------------------------------------------------------------ state
  def abstract_init_inputs(self, key):
    resnet = None
    if self.config.model.use_resnet:
      resnet = jax.eval_shape(models_lib.resnet_init, key)
    return key, resnet

  def init_inputs(self, key, data=None):
    """(state init key, ResNet variables or None): reads the weights file."""
    del data
    init_rng, resnet_rng = jax.random.split(key)
    resnet = None
    if self.config.model.use_resnet:
      resnet = models_lib.init_resnet_variables(self.config.model, resnet_rng)
    return init_rng, resnet

  def init(self, rng, resnet):
    return create_train_state(rng, resnet, models=self.models,
                              config=self.config)

  def check_data(self, state, data) -> None:
    """Cached features must come from this state's ResNet and settings."""
    if data is None or data.feature_entry is None:
      return
    want = self._feature_metadata(None)
    feature_cache.check_entry(
        data.feature_entry,
        {k: want[k] for k in ('shape', 'resnet_input_size')},
        {'shape': 'feature shape (config.model.fusion_size)',
         'resnet_input_size': 'config.model.resnet_input_size'},
        self.config.data.prepared_dir)
    if state is not None:
      self.check_features(data.feature_entry,
                          resnet_variables(state.g_params, state.resnet))

  def check_features(self, found: dict, variables: Any) -> None:
    """Raises ValueError unless records' `found` entry was made by the
    ResNet `variables`."""
    mc = self.config.model
    now = feature_cache.fingerprint(variables)
    if found.get('fingerprint') != now:
      current = feature_cache.describe({'resnet18_weights':
                                        mc.resnet18_weights,
                                        'seed': self.config.seed})
      raise ValueError(
          f'The ResNet features in {self.config.data.prepared_dir} were '
          'computed with other ResNet weights: the records used '
          f'{feature_cache.describe(found)} (fingerprint '
          f'{str(found.get("fingerprint"))[:12]}), this run uses {current} '
          f'(fingerprint {now[:12]}). Re-run --mode=prepare with this config, '
          'or use the weights above.')

  # ------------------------------------------------------------ steps
  def train_step(self, state, batch):
    return train_step(state, batch, models=self.models, config=self.config)

  def colorize(self, state, batch):
    return colorize_batch(state, batch, models=self.models, config=self.config)

  # ------------------------------------------------------------ inference
  def from_saved(self, tree):
    return {'g_params': tree['g_params'], 'resnet': tree.get('resnet')}

  def host_inputs(self, gray):
    inputs = {'gray': gray}
    if self.config.model.use_edge:
      import cv2  # pylint: disable=g-import-not-at-top
      d = self.config.data  # Canny at model size, as in training
      edge = np.zeros_like(gray)
      for g, e in zip(gray, edge):
        e[..., 0] = cv2.Canny(g[..., 0], d.canny_low, d.canny_high)
      inputs['edge'] = edge
    return inputs

  def predict(self, params, inputs):
    return predict(params, inputs, models=self._inference_models,
                   model_config=self.config.model)

  # ------------------------------------------------------------ prepare
  def feature_shape(self):
    f = self.config.model.fusion_size
    return (f, f, resnet18.FEATURE_CHANNELS)

  def _feature_metadata(self, variables) -> dict:
    mc, data = self.config.model, self.config.data
    meta = {
        'dtype': data.feature_cache_dtype,
        'shape': list(self.feature_shape()),
        'resnet_input_size': mc.resnet_input_size,
        'fusion_size': mc.fusion_size, 'compute_dtype': 'float32',
        'resnet18_weights': mc.resnet18_weights, 'seed': self.config.seed,
    }
    if variables is not None:
      meta['fingerprint'] = feature_cache.fingerprint(variables)
    return meta

  def featurizer(self) -> Featurizer:
    """The frozen ResNet of a fresh run of this config, as prepare's
    featurizer (its weights load, or fail, before anything is written)."""
    if not self.config.model.use_resnet:
      raise ValueError('config.data.use_feature_cache=True needs the ResNet '
                       'branch, but config.model.use_resnet is False')
    feature_cache.check_dtype(self.config.data)
    variables = self.init_inputs(families.init_key(self.config.seed))[1]
    mc = self.config.model
    return Featurizer(variables, self._feature_metadata(variables),
                      mc.resnet_input_size, mc.fusion_size)

  # ------------------------------------------------------------ report
  @classmethod
  def report_figures(cls, get, config):
    w = config.get('loss', {})
    saliency_title = 'saliency L1(s·G(x), s·y)'
    if not w.get('saliency_weight', 1):
      saliency_title += ' (off: weight 0)'
    critic_title = 'critic loss: E[D(fake)] − E[D(real)]'
    if w.get('gradient_penalty_weight'):
      critic_title += f' + {w["gradient_penalty_weight"]:g}·GP'
    total = 'G = ' + ' + '.join(
        f'{w[k]:g}·{label}' if k in w else label
        for k, label in (('l1_weight', 'L1'), ('gan_weight', 'GAN'),
                         ('saliency_weight', 'saliency')))
    return [
        {'file': 'losses.png', 'title': 'generator', 'panels': [
            ({'generator loss': get('train/g_loss')},
             f'generator loss: {total}', 'loss'),
            ({'L1': get('train/l1')}, 'L1(G(x), y)', ''),
            ({'GAN': get('train/gan')}, 'GAN: −E[D(G(x))]', ''),
            ({'saliency L1': get('train/saliency')}, saliency_title, ''),
        ]},
        {'file': 'critic.png', 'title': 'critic', 'panels': [
            ({'critic loss': get('train/d_loss')}, critic_title, 'loss'),
            ({'D(real)': get('train/d_real'), 'D(fake)': get('train/d_fake')},
             'mean critic output', 'probability'),
        ]},
    ]
