"""The GAN family: the paper's edge/saliency-guided model and SCGAN.

One family, two configs (configs/default.py, configs/scgan_baseline.py):
a U-Net generator on gray (+ Canny edge) emitting RGB (+ saliency), an
optional frozen ResNet-18 fused into it, and a PatchGAN critic. Here: the
train state, the optimisers and their schedules, the model's inputs,
`generate`, the training step (read it aloud), the inference apply, and the
ResNet side of the feature cache.

Opt-in switches beyond the paper, all off in its configs (measured in
docs/results.md):
model.output='chroma' (G predicts chroma on the input's own luminance),
loss.gan (the adversarial objective), loss.l1_rebalance (the L1 weighted
by the rarity of each pixel's true colour), optim.*_lr_schedule (warmup,
cosine or linear decay) and optim.ema_decay (an EMA of G's parameters that
evaluation, samples, colorize and export use).

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

from jaxcolor import chroma
from jaxcolor import color
from jaxcolor import families
from jaxcolor import losses
from jaxcolor import models as models_lib
from jaxcolor import parallel
from jaxcolor import quantization
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
    ema_g_params: exponential moving average of g_params
      (config.optim.ema_decay > 0), else None.
  """
  step: jnp.ndarray
  g_params: Any
  g_opt_state: Any
  d_params: Any
  d_opt_state: Any
  resnet: Any
  rng: jnp.ndarray
  ema_g_params: Any = None

  def resnet_variables(self) -> Any:
    return resnet_variables(self.g_params, self.resnet)


def resnet_variables(g_params: Any, resnet: Any) -> Any:
  """The ResNet's full {'params', 'batch_stats'}, wherever its params live."""
  if resnet is None:
    return None
  if 'resnet' in g_params:
    return {'params': g_params['resnet'], **resnet}
  return resnet


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


def inference_g_params(state: TrainState) -> Any:
  """The generator parameters evaluation and inference use: the EMA when
  the run keeps one, else the trained ones."""
  if state.ema_g_params is not None:
    return state.ema_g_params
  return state.g_params


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

  g_tx, d_tx = make_optimizers(config, *learning_rates(config))
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params, g_opt_state=g_tx.init(g_params),
      d_params=d_params, d_opt_state=d_tx.init(d_params),
      resnet=frozen, rng=jax.random.PRNGKey(config.seed + 1),
      ema_g_params=(jax.tree.map(jnp.copy, g_params)
                    if ema_enabled(config) else None))


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
  """G(gray ⊕ edge, ResNet features) -> (B, H, W, 3|2 [+1]) in [-1, 1].

  The raw output: RGB, or with model.output='chroma' (Cr, Cb) offsets;
  `split_output` turns either into RGB (+ saliency).

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


def split_output(out, gray, model_config):
  """G's raw output (B,H,W,C_out) -> (rgb (B,H,W,3), saliency (B,H,W,1)
  or None), in [-1, 1].

  model.output='rgb' (the paper): the first three channels are RGB.
  'chroma': the first two are (Cr, Cb) offsets in [-1, 1] units (the
  full 8-bit range), and RGB is rebuilt on `gray` (B,H,W,1), the input's
  own luminance (`chroma.rgb_from_chroma`): its BT.601 luminance is `gray`
  exactly, so no loss is spent re-predicting it. That RGB is not clipped
  (the L1 pulls colours that leave the cube back; `predict` clips).
  """
  n = 2 if model_config.output == 'chroma' else 3
  image, saliency = out[..., :n], None
  if model_config.saliency_head:
    saliency = out[..., n:n + 1]
  if n == 2:
    image = chroma.rgb_from_chroma(gray, image)
  return image, saliency


def critic_apply(models, d_params, gray, rgb):
  """D(gray ⊕ rgb) -> (B, h, w, 1) patch logits."""
  return models.critic.apply({'params': d_params},
                             jnp.concatenate([gray, rgb], axis=-1))


def rebalance_lambda(loss_config) -> float:
  """loss.l1_rebalance_lambda, checked: in (0, 1]."""
  lam = float(loss_config.l1_rebalance_lambda)
  if not 0.0 < lam <= 1.0:
    raise ValueError(f'config.loss.l1_rebalance_lambda={lam}: must be in '
                     '(0, 1] (1: every colour weighs the same)')
  return lam


def l1_weight_grid(loss_config) -> np.ndarray | None:
  """The rebalanced L1's weight per integer ab (`quantization.weight_grid`)
  from the ImageNet prior, or None when loss.l1_rebalance is off."""
  if not loss_config.l1_rebalance:
    return None
  weights = quantization.rebalance_weights(quantization.load_prior(),
                                           lam=rebalance_lambda(loss_config))
  return quantization.weight_grid(quantization.load_bins(), weights)


def l1_pixel_weights(real_rgb, grid):
  """Each pixel's rebalancing weight (B, H, W) from its true colour
  `real_rgb` (B, H, W, 3) in [-1, 1]; `grid` from `l1_weight_grid`."""
  ab = color.rgb_to_lab(color.to_unit_rgb(real_rgb))[..., 1:]
  return quantization.grid_lookup(grid, ab)


def generator_loss(fake, d_params, inputs, *, models, config, l1_grid=None):
  """G's loss on its raw output `fake` against the critic `d_params`:
  (total, {'l1', 'gan', 'saliency'}); `inputs` from `model_inputs`,
  `l1_grid` from `l1_weight_grid` (None: the plain L1)."""
  mc, lw = config.model, config.loss
  gray = inputs['gray']
  fake_rgb, fake_sal = split_output(fake, gray, mc)
  fake_logits = critic_apply(models, d_params, gray, fake_rgb)
  pixel_weights = None
  if l1_grid is not None:
    pixel_weights = l1_pixel_weights(inputs['rgb'], l1_grid)
  return losses.generator_losses(
      fake_rgb, fake_sal, inputs['rgb'], inputs['saliency'],
      losses.generator_adversarial(lw.gan, fake_logits),
      l1_weight=lw.l1_weight, gan_weight=lw.gan_weight,
      saliency_weight=lw.saliency_weight, l1_pixel_weights=pixel_weights)


# ------------------------------------------------------------------ the step
def train_step(state: TrainState, batch: dict, *,
               models: models_lib.Models, config: ml_collections.ConfigDict,
               l1_grid: np.ndarray | None = None):
  """One critic update, then one generator update, on this device's batch.

  `l1_grid`: the rebalanced L1's weights (`l1_weight_grid`), None: plain L1.
  """
  mc, lw = config.model, config.loss
  g_lr, d_lr = learning_rates(config)
  g_tx, d_tx = make_optimizers(config, g_lr, d_lr)
  inputs = model_inputs(batch, mc)
  gray, real_rgb = inputs['gray'], inputs['rgb']

  def generate_from(g_params):
    return generate(g_params, state.resnet_variables(), inputs, models=models,
                    model_config=mc)

  if mc.reuse_generator_forward:
    # The generator runs once; its VJP serves the generator update below.
    fake, generator_vjp = jax.vjp(generate_from, state.g_params)
  else:
    fake = generate_from(state.g_params)
  fake_rgb, _ = split_output(fake, gray, mc)

  # 1. Critic, with the generator held fixed. The paper's objective:
  #    D = E[D(fake)] - E[D(real)] on probabilities (losses.critic_objective).
  def critic_objective(d_params):
    real_logits = critic_apply(models, d_params, gray, real_rgb)
    fake_logits = critic_apply(models, d_params, gray,
                               jax.lax.stop_gradient(fake_rgb))
    loss = losses.critic_objective(lw.gan, real_logits, fake_logits)
    if lw.gradient_penalty_weight:
      rng = jax.random.fold_in(state.rng, jax.lax.axis_index(AXIS))
      loss += lw.gradient_penalty_weight * losses.gradient_penalty(
          lambda x: losses.critic_value(
              lw.gan, models.critic.apply({'params': d_params}, x)),
          gray, real_rgb, jax.lax.stop_gradient(fake_rgb), rng)
    return loss, (jnp.mean(jax.nn.sigmoid(real_logits)),
                  jnp.mean(jax.nn.sigmoid(fake_logits)))

  (d_loss, (d_real_mean, d_fake_mean)), d_grads = jax.value_and_grad(
      critic_objective, has_aux=True)(state.d_params)
  d_grads = jax.lax.pmean(d_grads, AXIS)
  d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state,
                                       state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  # 2. Generator: L1 + GAN (against the updated critic) + saliency-L1.
  def generator_objective(fake):
    return generator_loss(fake, d_params, inputs, models=models, config=config,
                          l1_grid=l1_grid)

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

  # 3. The average of the generator's parameters (optim.ema_decay > 0).
  ema_g_params = state.ema_g_params
  if ema_g_params is not None:
    ema_g_params = update_ema(ema_g_params, g_params,
                              ema_decay_at(config.optim, state.step))

  metrics = {
      'g_loss': g_loss, 'd_loss': d_loss, **parts,
      'd_real': d_real_mean, 'd_fake': d_fake_mean,
      'g_grad_norm': optax.global_norm(g_grads),
      'd_grad_norm': optax.global_norm(d_grads),
      # Non-finite parameters must be caught before they are checkpointed.
      'g_param_norm': optax.global_norm(g_params),
      'd_param_norm': optax.global_norm(d_params),
      'g_lr': lr_at(g_lr, state.step), 'd_lr': lr_at(d_lr, state.step),
  }
  metrics = jax.lax.pmean(metrics, AXIS)
  new_state = state.replace(
      step=state.step + 1, g_params=g_params, g_opt_state=g_opt_state,
      d_params=d_params, d_opt_state=d_opt_state,
      rng=jax.random.fold_in(state.rng, state.step),
      ema_g_params=ema_g_params)
  return new_state, metrics


def colorize_batch(state: TrainState, batch: dict, *,
                   models: models_lib.Models,
                   config: ml_collections.ConfigDict) -> dict:
  """G's output for a batch: {'fake_rgb' (B,H,W,3) [, 'fake_saliency']},
  in [-1, 1], from the EMA parameters when the run keeps them."""
  mc = config.model
  inputs = model_inputs(batch, mc)
  fake = generate(inference_g_params(state), state.resnet_variables(),
                  inputs, models=models, model_config=mc)
  fake_rgb, fake_sal = split_output(fake, inputs['gray'], mc)
  out = {'fake_rgb': fake_rgb}
  if fake_sal is not None:
    out['fake_saliency'] = fake_sal
  return out


def predict(params: dict, inputs: dict, *, models: models_lib.Models,
            model_config) -> jax.Array:
  """{'g_params', 'resnet'} + uint8 {'gray'[, 'edge']} -> RGB in [0, 1]."""
  inputs = model_inputs(inputs, model_config)
  out = generate(params['g_params'], params.get('resnet'), inputs,
                 models=models, model_config=model_config)
  rgb, _ = split_output(out, inputs['gray'], model_config)
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
# Switches added after the paper, with their paper values: configs saved
# before them ran exactly these.
_SWITCH_DEFAULTS = {
    'model': {'output': 'rgb'},
    'loss': {'gan': 'paper', 'l1_rebalance': False, 'l1_rebalance_lambda': 0.5},
    'optim': {'g_lr_schedule': 'constant', 'd_lr_schedule': 'constant',
              'warmup_steps': 0, 'decay_steps': 0, 'end_lr_fraction': 0.0,
              'ema_decay': 0.0, 'ema_warmup': True},
}


class GANFamily(families.Family):
  """The proposed model ('edge_saliency_gan') and SCGAN ('scgan')."""
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
    self.l1_grid = l1_weight_grid(config.loss)  # None: the plain L1

  @classmethod
  def upgrade_config(cls, saved: dict) -> dict:
    for key in _MOVED_TO_MODEL:
      if key in saved:
        saved['model'].setdefault(key, saved.pop(key))
    saved['model'].setdefault('reuse_generator_forward', True)
    for section, defaults in _SWITCH_DEFAULTS.items():
      for key, value in defaults.items():
        saved.setdefault(section, {}).setdefault(key, value)
    return saved

  @classmethod
  def benchmark_config(cls, config):
    """Speed depends neither on the ResNet's weights (a random branch) nor
    on the run's length (a decaying schedule of a run given in epochs spans
    the warmup and one more step)."""
    mc, notes = config.model, []
    config = config.copy_and_resolve_references()
    o = config.optim
    if o.g_lr_schedule != 'constant' or o.d_lr_schedule != 'constant':
      if decay_steps(config) <= 0:
        config.num_train_steps = int(o.warmup_steps) + 1
    if mc.use_resnet and mc.require_resnet18_weights and not mc.resnet18_weights:
      config.model.require_resnet18_weights = False
      notes.append('no ResNet-18 weights given: measured with a randomly '
                   'initialised branch (the speed is the same)')
    return config, notes

  def validate(self) -> None:
    super().validate()
    mc, o = self.config.model, self.config.optim
    _check_choice('config.loss.gan', self.config.loss.gan,
                  losses.GAN_OBJECTIVES)
    for key in ('g_lr_schedule', 'd_lr_schedule'):
      _check_choice(f'config.optim.{key}', o[key], LR_SCHEDULES)
    rebalance_lambda(self.config.loss)
    if not 0.0 <= float(o.ema_decay) < 1.0:
      raise ValueError(f'config.optim.ema_decay={o.ema_decay}: must be in '
                       '[0, 1) (0: no EMA)')
    if int(o.warmup_steps) < 0 or int(o.decay_steps) < 0:
      raise ValueError('config.optim.warmup_steps and decay_steps must be '
                       f'>= 0; got {o.warmup_steps} and {o.decay_steps}')
    if not 0.0 <= float(o.end_lr_fraction) <= 1.0:
      raise ValueError(f'config.optim.end_lr_fraction={o.end_lr_fraction}: '
                       'must be in [0, 1]')
    decaying = [k for k in ('g_lr_schedule', 'd_lr_schedule')
                if o[k] != 'constant']
    length = decay_steps(self.config)  # <= 0: from num_epochs, resolved later
    if decaying and 0 < length <= int(o.warmup_steps):
      raise ValueError(
          f'config.optim.{decaying[0]}={o[decaying[0]]!r} decays over '
          'config.optim.decay_steps (0: the run\'s length), which must '
          f'exceed warmup_steps={o.warmup_steps}; got '
          f'{length} (set decay_steps or num_train_steps)')
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
    return train_step(state, batch, models=self.models, config=self.config,
                      l1_grid=self.l1_grid)

  def colorize(self, state, batch):
    return colorize_batch(state, batch, models=self.models, config=self.config)

  # ------------------------------------------------------------ inference
  @property
  def inference_keys(self):
    """The state fields inference reads: the EMA generator when kept."""
    g = 'ema_g_params' if ema_enabled(self.config) else 'g_params'
    return (g, 'resnet')

  def inference_params(self, state):
    return {'g_params': inference_g_params(state), 'resnet': state.resnet}

  def from_saved(self, tree):
    """A checkpoint's fields (`inference_keys`) or a bundle's tree ->
    {'g_params', 'resnet'}."""
    g = tree.get('ema_g_params')
    if g is None:
      g = tree['g_params']
    return {'g_params': g, 'resnet': tree.get('resnet')}

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
    objective = w['gan']
    saliency_title = 'saliency L1(s·G(x), s·y)'
    if not w.get('saliency_weight', 1):
      saliency_title += ' (off: weight 0)'
    critic_title, gan_title = _OBJECTIVE_TITLES[objective]
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
            ({'GAN': get('train/gan')}, gan_title, ''),
            ({'saliency L1': get('train/saliency')}, saliency_title, ''),
        ]},
        {'file': 'critic.png', 'title': 'critic', 'panels': [
            ({'critic loss': get('train/d_loss')}, critic_title, 'loss'),
            ({'D(real)': get('train/d_real'), 'D(fake)': get('train/d_fake')},
             'mean critic output σ(D)', 'probability'),
        ]},
    ]


# config.loss.gan -> (critic loss, generator's GAN term) titles of report.
_OBJECTIVE_TITLES = {
    'paper': ('critic loss: E[D(fake)] − E[D(real)]', 'GAN: −E[D(G(x))]'),
    'nonsaturating': ('critic loss: BCE (softplus on logits)',
                      'GAN: E[softplus(−D(G(x)))]'),
    'hinge': ('critic loss: E[relu(1−D(real))] + E[relu(1+D(fake))]',
              'GAN: −E[D(G(x))] (logits)'),
    'lsgan': ('critic loss: ½E[(D(real)−1)²] + ½E[D(fake)²]',
              'GAN: ½E[(D(G(x))−1)²]'),
}


def _check_choice(key: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ValueError(f'{key}={value!r}; expected one of {choices}')
