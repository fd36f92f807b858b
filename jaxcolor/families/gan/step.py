"""The GAN family's computation: inputs, `generate`, losses, the training
step and `predict`.

Images inside are float32 in [-1, 1]; batches arrive as the pipeline's
uint8 maps.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcolor import losses
from jaxcolor import models as models_lib
from jaxcolor.color import ab_bins
from jaxcolor.color import cielab
from jaxcolor.color import ycrcb
from jaxcolor.data import feature_cache
from jaxcolor.data import preprocess
from jaxcolor.families.gan import optim
from jaxcolor.families.gan import state as state_lib
from jaxcolor.models import resnet18
from jaxcolor.runtime import parallel

AXIS = parallel.AXIS

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
        fusion_size=models_lib.fusion_size(model_config,
                                           inputs['gray'].shape[1]))
  return models.generator.apply({'params': g_params['generator']},
                                inputs['x'], feats)


def split_output(out, gray, model_config):
  """G's raw output (B,H,W,C_out) -> (rgb (B,H,W,3), saliency (B,H,W,1)
  or None), in [-1, 1].

  model.output='rgb' (the paper): the first three channels are RGB.
  'chroma': the first two are (Cr, Cb) offsets in [-1, 1] units (the
  full 8-bit range), and RGB is rebuilt on `gray` (B,H,W,1), the input's
  own luminance (`ycrcb.rgb_from_chroma`): its BT.601 luminance is `gray`
  exactly, so no loss is spent re-predicting it. That RGB is not clipped
  (the L1 pulls colours that leave the cube back).
  """
  colour_channels = 2 if model_config.output == 'chroma' else 3
  saliency = None
  if model_config.saliency_head:  # the channel after the colour ones
    saliency = out[..., colour_channels:colour_channels + 1]
  if model_config.output == 'chroma':
    rgb = ycrcb.rgb_from_chroma(gray, output_chroma(out, model_config))
  else:
    rgb = out[..., :3]
  return rgb, saliency


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
  """The rebalanced L1's weight per integer ab (`ab_bins.weight_grid`)
  from the ImageNet prior, or None when loss.l1_rebalance is off."""
  if not loss_config.l1_rebalance:
    return None
  weights = ab_bins.rebalance_weights(ab_bins.load_prior(),
                                      lam=rebalance_lambda(loss_config))
  return ab_bins.weight_grid(ab_bins.load_bins(), weights)


def l1_pixel_weights(real_rgb, grid):
  """Each pixel's rebalancing weight (B, H, W) from its true colour
  `real_rgb` (B, H, W, 3) in [-1, 1]; `grid` from `l1_weight_grid`."""
  ab = cielab.rgb_to_lab(cielab.to_unit_rgb(real_rgb))[..., 1:]
  return ab_bins.grid_lookup(grid, ab)


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
def critic_objective(d_params, gray, real_rgb, fake_rgb, rng, *, models,
                     loss_config):
  """The critic's loss on one batch, the generator's `fake_rgb` held fixed:
  (loss, (mean σ(D(real)), mean σ(D(fake)))). The paper's objective:
  D = E[D(fake)] - E[D(real)] on probabilities (losses.critic_objective).

  gray (B,H,W,1), real_rgb and fake_rgb (B,H,W,3), in [-1, 1]; `rng` serves
  the gradient penalty only.
  """
  lw = loss_config
  real_logits = critic_apply(models, d_params, gray, real_rgb)
  fake_logits = critic_apply(models, d_params, gray,
                             jax.lax.stop_gradient(fake_rgb))
  loss = losses.critic_objective(lw.gan, real_logits, fake_logits)
  if lw.gradient_penalty_weight:
    loss += lw.gradient_penalty_weight * losses.gradient_penalty(
        lambda x: losses.critic_value(
            lw.gan, models.critic.apply({'params': d_params}, x)),
        gray, real_rgb, jax.lax.stop_gradient(fake_rgb), rng)
  return loss, (jnp.mean(jax.nn.sigmoid(real_logits)),
                jnp.mean(jax.nn.sigmoid(fake_logits)))


def train_step(state: state_lib.TrainState, batch: dict, *,
               models: models_lib.Models, config: ml_collections.ConfigDict,
               l1_grid: np.ndarray | None = None):
  """One critic update, then one generator update, on this device's batch.

  `l1_grid`: the rebalanced L1's weights (`l1_weight_grid`), None: plain L1.
  With config.grad_accum_steps = k > 1 the batch is split into k
  micro-batches (`accumulated_train_step`).
  """
  if config.get('grad_accum_steps', 1) > 1:
    return accumulated_train_step(state, batch, models=models, config=config,
                                  l1_grid=l1_grid)
  mc = config.model
  g_lr, d_lr = optim.learning_rates(config)
  g_tx, d_tx = optim.make_optimizers(config, g_lr, d_lr)
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

  # 1. Critic, with the generator held fixed.
  rng = jax.random.fold_in(state.rng, jax.lax.axis_index(AXIS))
  (d_loss, (d_real_mean, d_fake_mean)), d_grads = jax.value_and_grad(
      critic_objective, has_aux=True)(
          state.d_params, gray, real_rgb, fake_rgb, rng, models=models,
          loss_config=config.loss)
  d_grads, d_params, d_opt_state = _update(
      d_tx, d_lr, config, d_grads, state.d_params, state.d_opt_state)

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
  g_grads, g_params, g_opt_state = _update(
      g_tx, g_lr, config, g_grads, state.g_params, state.g_opt_state)

  return _finish_step(state, config, g_lr, d_lr, g_params, g_opt_state,
                      g_grads, d_params, d_opt_state, d_grads, {
                          'g_loss': g_loss, 'd_loss': d_loss, **parts,
                          'd_real': d_real_mean, 'd_fake': d_fake_mean})


def accumulated_train_step(state: state_lib.TrainState, batch: dict, *,
                           models: models_lib.Models,
                           config: ml_collections.ConfigDict,
                           l1_grid: np.ndarray | None = None):
  """`train_step` as k = config.grad_accum_steps micro-batches of this
  device's batch (B,...) -> k x (B/k,...), one update of each optimiser.

  1. The critic's gradient: the mean of its k micro-batch gradients, the
     generator held fixed. 2. The generator's: the mean of its k, against
     the updated critic. Micro-batches run one after another (`lax.scan`),
     so only one micro-batch's activations are live at a time; the
     generator runs forward in both phases. Without BatchNorm (the GANs
     have none) this is the update of the whole batch up to float rounding.
  """
  k = config.grad_accum_steps
  mc = config.model
  g_lr, d_lr = optim.learning_rates(config)
  g_tx, d_tx = optim.make_optimizers(config, g_lr, d_lr)
  micro = split_micro_batches(batch, k)
  resnet_vars = state.resnet_variables()
  device_rng = jax.random.fold_in(state.rng, jax.lax.axis_index(AXIS))

  def fake_of(g_params, inputs):
    return generate(g_params, resnet_vars, inputs, models=models,
                    model_config=mc)

  # 1. Critic, with the generator held fixed.
  def critic_micro(grads, indexed):
    i, micro_batch = indexed
    inputs = model_inputs(micro_batch, mc)
    gray = inputs['gray']
    fake_rgb, _ = split_output(fake_of(state.g_params, inputs), gray, mc)
    (loss, means), g = jax.value_and_grad(critic_objective, has_aux=True)(
        state.d_params, gray, inputs['rgb'], fake_rgb,
        jax.random.fold_in(device_rng, i), models=models,
        loss_config=config.loss)
    return _add(grads, g), (loss, means)

  d_grads, (d_losses, (d_reals, d_fakes)) = _scan_mean(
      critic_micro, state.d_params, micro, k)
  d_grads, d_params, d_opt_state = _update(
      d_tx, d_lr, config, d_grads, state.d_params, state.d_opt_state)

  # 2. Generator: L1 + GAN (against the updated critic) + saliency-L1.
  def generator_micro(grads, indexed):
    _, micro_batch = indexed
    inputs = model_inputs(micro_batch, mc)

    def objective(g_params):
      return generator_loss(fake_of(g_params, inputs), d_params, inputs,
                            models=models, config=config, l1_grid=l1_grid)
    (loss, parts), g = jax.value_and_grad(objective, has_aux=True)(
        state.g_params)
    return _add(grads, g), (loss, parts)

  g_grads, (g_losses, parts) = _scan_mean(
      generator_micro, state.g_params, micro, k)
  g_grads, g_params, g_opt_state = _update(
      g_tx, g_lr, config, g_grads, state.g_params, state.g_opt_state)

  return _finish_step(state, config, g_lr, d_lr, g_params, g_opt_state,
                      g_grads, d_params, d_opt_state, d_grads, {
                          'g_loss': jnp.mean(g_losses),
                          'd_loss': jnp.mean(d_losses),
                          **{name: jnp.mean(v) for name, v in parts.items()},
                          'd_real': jnp.mean(d_reals),
                          'd_fake': jnp.mean(d_fakes)})


def _update(tx, lr, config, grads, params, opt_state):
  """Gradients averaged over the devices, then one optimiser update:
  (averaged grads, new params, new optimiser state)."""
  grads = parallel.pmean(grads)
  params, opt_state = optim.apply_update(tx, lr, config, grads, params,
                                         opt_state)
  return grads, params, opt_state


def split_micro_batches(batch: dict, k: int) -> dict:
  """{key: (B, ...)} -> {key: (k, B/k, ...)}: k micro-batches, in order."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f'a per-device batch of {x.shape[0]} does not split '
                       f'into config.grad_accum_steps={k} micro-batches')
    return x.reshape((k, x.shape[0] // k) + x.shape[1:])
  return jax.tree.map(split, batch)


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _scan_mean(body, like, micro, k):
  """Runs `body(sum, (i, micro-batch))` over the k micro-batches; (mean of
  the summed gradients, body's per-micro-batch outputs stacked (k, ...)).

  Unrolled on CPUs, whose compiler runs convolutions inside loops in slow
  layouts (see `trainer.make_train_fn`).
  """
  zeros = jax.tree.map(jnp.zeros_like, like)
  unroll = k if jax.default_backend() == 'cpu' else 1
  total, outputs = jax.lax.scan(body, zeros, (jnp.arange(k), micro),
                                unroll=unroll)
  return jax.tree.map(lambda g: g / k, total), outputs


def _finish_step(state, config, g_lr, d_lr, g_params, g_opt_state, g_grads,
                 d_params, d_opt_state, d_grads, losses_and_means):
  """3. The EMA of the generator's parameters, the metrics, the new state."""
  ema_g_params = state.ema_g_params
  if ema_g_params is not None:  # optim.ema_decay > 0
    ema_g_params = optim.update_ema(
        ema_g_params, g_params, optim.ema_decay_at(config.optim, state.step))

  metrics = {
      **losses_and_means,
      'g_grad_norm': optax.global_norm(g_grads),
      'd_grad_norm': optax.global_norm(d_grads),
      # Non-finite parameters must be caught before they are checkpointed.
      'g_param_norm': optax.global_norm(g_params),
      'd_param_norm': optax.global_norm(d_params),
      'g_lr': optim.lr_at(g_lr, state.step),
      'd_lr': optim.lr_at(d_lr, state.step),
  }
  metrics = parallel.pmean(metrics)
  new_state = state.replace(
      step=state.step + 1, g_params=g_params, g_opt_state=g_opt_state,
      d_params=d_params, d_opt_state=d_opt_state,
      rng=jax.random.fold_in(state.rng, state.step),
      ema_g_params=ema_g_params)
  return new_state, metrics


def colorize_batch(state: state_lib.TrainState, batch: dict, *,
                   models: models_lib.Models,
                   config: ml_collections.ConfigDict) -> dict:
  """G's output for a batch: {'fake_rgb' (B,H,W,3) [, 'fake_saliency']},
  in [-1, 1], from the EMA parameters when the run keeps them."""
  mc = config.model
  inputs = model_inputs(batch, mc)
  fake = generate(state_lib.inference_g_params(state), state.resnet_variables(),
                  inputs, models=models, model_config=mc)
  fake_rgb, fake_sal = split_output(fake, inputs['gray'], mc)
  out = {'fake_rgb': fake_rgb}
  if fake_sal is not None:
    out['fake_saliency'] = fake_sal
  return out


def output_chroma(out, model_config):
  """G's raw output (B,H,W,C_out) -> its chroma (B,H,W,2): (Cr, Cb) offsets
  in [-1, 1] units (8-bit offsets / 127.5), unclipped.

  model.output='chroma': the first two channels are that chroma; 'rgb'
  (the paper): the chroma of the first three, as RGB (`ycrcb`).
  """
  if model_config.output == 'chroma':
    return out[..., :2]
  return ycrcb.chroma_from_rgb(out[..., :3])


def predict(params: dict, inputs: dict, *, models: models_lib.Models,
            model_config) -> jax.Array:
  """{'g_params', 'resnet'} + uint8 {'gray'[, 'edge']} -> chroma (B,H,W,2),
  (Cr - 128, Cb - 128) in 8-bit units, unclipped."""
  inputs = model_inputs(inputs, model_config)
  out = generate(params['g_params'], params.get('resnet'), inputs,
                 models=models, model_config=model_config)
  return output_chroma(out, model_config) * 127.5
