"""The training step (read it aloud) and the training loop.

`train_step` is written for one device's share of the batch and averages
gradients and metrics over the `data` axis explicitly; `jaxcolor.parallel`
compiles it with `pmap` or `jit(shard_map)`.
"""

import dataclasses
import functools
import os
import signal
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcolor import checkpoint
from jaxcolor import chroma
from jaxcolor import feature_cache
from jaxcolor import losses
from jaxcolor import models as models_lib
from jaxcolor import parallel
from jaxcolor import state as state_lib
from jaxcolor import summaries
from jaxcolor.data import pipeline
from jaxcolor.data import preprocess
from jaxcolor.models import resnet18

AXIS = parallel.AXIS


# ------------------------------------------------------------------ the model
def model_inputs(batch: dict[str, jnp.ndarray], model_config) -> dict:
  """uint8 batch -> float32 in [-1, 1]: gray, the generator's input, targets.

  Returns dict with 'gray' (B,H,W,1), 'x' (B,H,W,1|2: gray [+ edge]),
  'rgb' (B,H,W,3), 'saliency' (B,H,W,1), and the batch's cached
  'resnet_features' (B,f,f,512) as float32 if it has them.
  """
  gray = preprocess.normalize(batch['gray'])
  x = gray
  if model_config.use_edge:
    x = jnp.concatenate([gray, preprocess.normalize(batch['edge'])], axis=-1)
  inputs = {'gray': gray, 'x': x, 'rgb': preprocess.normalize(batch['rgb']),
            'saliency': preprocess.normalize(batch['saliency'])}
  if feature_cache.KEY in batch:
    inputs[feature_cache.KEY] = batch[feature_cache.KEY].astype(jnp.float32)
  return inputs


def generate(g_params, resnet_variables, inputs, *, models, model_config):
  """G(gray ⊕ edge, ResNet features) -> (B, H, W, 3 [+1]) in [-1, 1].

  A frozen ResNet (its params outside g_params) gets no gradient; cached
  features in `inputs` (feature_cache.KEY) replace it.
  """
  feats = None
  if model_config.use_resnet and feature_cache.KEY in inputs:
    feats = inputs[feature_cache.KEY]
  elif model_config.use_resnet:
    if 'resnet' in g_params:
      resnet_variables = {**resnet_variables, 'params': g_params['resnet']}
    else:
      resnet_variables = jax.lax.stop_gradient(resnet_variables)
    feats = resnet18.fusion_features(
        models.resnet, resnet_variables, inputs['gray'],
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
def train_step(state: state_lib.TrainState, batch: dict, *,
               models: models_lib.Models, config: ml_collections.ConfigDict):
  """One critic update, then one generator update, on this device's batch."""
  mc, lw = config.model, config.loss
  g_tx, d_tx = state_lib.make_optimizers(config)
  inputs = model_inputs(batch, mc)
  gray, real_rgb, real_sal = inputs['gray'], inputs['rgb'], inputs['saliency']

  def generate_from(g_params):
    return generate(g_params, state.resnet_variables(), inputs, models=models,
                    model_config=mc)

  if config.reuse_generator_forward:
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

  if config.reuse_generator_forward:
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


def colorize_batch(state: state_lib.TrainState, batch: dict, *,
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


def eval_step(state: Any, batch: dict, *, colorize: Callable):
  """Sums of per-image PSNR/SSIM (model and gray copy) over the valid images.

  `colorize(state, batch)['fake_rgb']` is the model's RGB in [-1, 1];
  `batch['mask']` (B,) is 1 for real examples and 0 for padding. Returns
  (state unchanged, sums psum-ed over devices).
  """
  import dm_pix  # pylint: disable=g-import-not-at-top
  real = losses.to_unit(preprocess.normalize(batch['rgb']))
  fake = losses.to_unit(colorize(state, batch)['fake_rgb'])
  gray3 = jnp.repeat(losses.to_unit(preprocess.normalize(batch['gray'])), 3,
                     axis=-1)
  mask = batch['mask'].astype(jnp.float32)
  sums = {
      'psnr': dm_pix.psnr(real, fake), 'ssim': dm_pix.ssim(real, fake),
      'psnr_gray': dm_pix.psnr(real, gray3),
      'ssim_gray': dm_pix.ssim(real, gray3),
  }
  sums = {k: jnp.sum(v * mask) for k, v in sums.items()}
  sums['count'] = jnp.sum(mask)
  return state, jax.lax.psum(sums, AXIS)


def sample_step(state: Any, batch: dict, *, colorize: Callable):
  """Generated images for a grid: (state, colorize(state, batch))."""
  return state, colorize(state, batch)


@dataclasses.dataclass(frozen=True)
class Family:
  """What the training loop needs of a model family (GAN or CIC).

  init_args: (config, key) -> arguments of create_state, made on the host
    (e.g. loaded ResNet weights).
  create_state: (*init_args) -> state; pure, jitted with output shardings.
  train_step / colorize: per-device functions of (state, batch).
  """
  init_args: Callable
  create_state: Callable
  train_step: Callable
  colorize: Callable


DTYPES = ('float32', 'bfloat16')


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """config.dtype -> the networks' activation dtype (params stay float32)."""
  if config.dtype not in DTYPES:
    raise ValueError(f'config.dtype={config.dtype!r}; expected one of {DTYPES}')
  return jnp.dtype(config.dtype)


def gan_init_args(config: ml_collections.ConfigDict, key: jax.Array):
  """(state init key, ResNet variables or None) from `init_key(seed)`.

  Also how `prepare` gets the ResNet of its feature cache.
  """
  init_rng, resnet_rng = jax.random.split(key)
  resnet = None
  if config.model.use_resnet:
    resnet = models_lib.init_resnet_variables(config.model, resnet_rng)
  return init_rng, resnet


def gan_family(config: ml_collections.ConfigDict) -> Family:
  """The proposed model and the SCGAN baseline."""
  models = models_lib.build_models(config.model, dtype=compute_dtype(config))

  return Family(
      init_args=gan_init_args,
      create_state=functools.partial(state_lib.create_train_state,
                                     models=models, config=config),
      train_step=functools.partial(train_step, models=models, config=config),
      colorize=functools.partial(colorize_batch, models=models, config=config))


# ------------------------------------------------------------------ compiling
def make_train_fn(family: Family, par: parallel.Parallel,
                  config: ml_collections.ConfigDict) -> Callable:
  """The compiled training call: (step_state, device batch) -> (state, metrics).

  With `config.steps_per_call = k > 1` one call runs k steps (`lax.scan`)
  on k stacked batches from `put_train_batches`, and each metric comes
  back as a (k,) array, one entry per step; with k = 1, as a scalar.
  """
  k = config.steps_per_call
  if k < 1:
    raise ValueError(f'config.steps_per_call must be >= 1, got {k}')
  if k == 1:
    return par.compile(family.train_step, donate_state=config.donate_state)

  # XLA's CPU compiler leaves convolutions inside a while loop in the
  # layouts autodiff gives them and runs those 30-80x slower, so on CPUs
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


# ------------------------------------------------------------------ the loop
def num_train_steps(config: ml_collections.ConfigDict) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  n = pipeline.num_examples(config, 'train')
  steps = config.num_epochs * n // config.data.batch_size
  if steps <= 0:
    raise ValueError(
        f'{n} training examples give no full batch of {config.data.batch_size};'
        ' lower config.data.batch_size or add images')
  return steps


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for settings that cannot work, before any work starts."""
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
  k = config.steps_per_call
  if k < 1:
    raise ValueError(f'config.steps_per_call must be >= 1, got {k}')
  for key in ('log_every_steps', 'checkpoint_every_steps', 'eval_every_steps',
              'image_every_steps'):
    if config[key] <= 0:
      raise ValueError(f'config.{key} must be positive, got {config[key]}')
    if config[key] % k:
      raise ValueError(f'config.{key}={config[key]} must be a multiple of '
                       f'config.steps_per_call={k}')
  compute_dtype(config)


class NonFiniteError(FloatingPointError):
  """A loss or gradient norm became NaN/inf."""


def _check_finite(step: int, metrics: dict) -> None:
  bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
  if bad:
    raise NonFiniteError(
        f'Non-finite {", ".join(bad)} at step {step}; stopping. The last '
        'checkpoint written before this step is intact; lower the learning '
        'rates or check the data before resuming.')


def _eval_batches(config, process_index, process_count):
  """Padded, masked eval batches; the same count on every process."""
  per_process = config.data.eval_batch_size // process_count
  total = pipeline.num_examples(config, 'val')
  n_batches = -(-total // config.data.eval_batch_size)
  if config.num_eval_batches > 0:
    n_batches = min(n_batches, config.num_eval_batches)
  ds = pipeline.build_eval_dataset(config, process_index=process_index,
                                   process_count=process_count,
                                   batch_size=per_process)
  it = iter(ds)
  template = None
  for _ in range(n_batches):
    batch = next(it, None)
    if batch is not None and template is None:
      template = batch
    if batch is None:
      if template is None:
        return
      batch = {k: np.zeros_like(v[:0]) for k, v in template.items()}
    n = next(iter(batch.values())).shape[0]
    pad = per_process - n
    batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
             for k, v in batch.items()}
    batch['mask'] = np.arange(per_process) < n
    yield batch


def evaluate(eval_fn, state, par, config) -> dict[str, float]:
  """Mean PSNR/SSIM of the model and of the gray copy over the val split."""
  totals = None
  for batch in _eval_batches(config, jax.process_index(), jax.process_count()):
    _, sums = eval_fn(state, par.put_batch(batch))
    sums = par.fetch(sums)
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  if not totals or totals['count'] == 0:
    return {}
  count = totals.pop('count')
  return {f'val/{k}': float(v / count) for k, v in totals.items()}


def init_key(seed: int) -> jax.Array:
  """Key for parameter init: 'rbg' compiles in seconds where the default
  threefry takes about a second per initializer on a CPU."""
  return jax.random.key(seed, impl='rbg')


GAN_MODELS = ('edge_saliency_gan', 'scgan')


def make_family(config: ml_collections.ConfigDict) -> Family:
  """The model family named by config.model.name."""
  if config.model.name in GAN_MODELS:
    return gan_family(config)
  if config.model.name == 'cic':
    from jaxcolor import train_cic  # pylint: disable=g-import-not-at-top

    def one_epoch():
      it = iter(pipeline.build_train_dataset(
          config, process_index=jax.process_index(),
          process_count=jax.process_count()))
      n = pipeline.num_examples(config, 'train') // config.data.batch_size
      return (next(it) for _ in range(max(1, n)))
    return Family(*train_cic.family_parts(config, one_epoch))
  raise ValueError(f'config.model.name={config.model.name!r}; expected one '
                   f"of {GAN_MODELS + ('cic',)}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Trains (resuming from `workdir` if it holds checkpoints); returns the state."""
  # Imported here: they pull in TensorFlow, which other modes do not need.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  parallel.maybe_initialize_distributed(config.distributed)
  validate_config(config)
  process_index, process_count = jax.process_index(), jax.process_count()
  total_steps = num_train_steps(config)
  k = config.steps_per_call
  if total_steps % k:
    raise ValueError(f'{total_steps} training steps are not a multiple of '
                     f'config.steps_per_call={k}')
  family = make_family(config)
  par = parallel.Parallel.create(config.parallel)
  os.makedirs(workdir, exist_ok=True)
  if process_index == 0:
    chroma.ensure_written(config, workdir)  # once per run, for colorize

  train_iter = iter(pipeline.build_train_dataset(
      config, process_index=process_index, process_count=process_count))

  # State is built on the devices, already replicated.
  init_args = family.init_args(config, init_key(config.seed))
  abstract = jax.eval_shape(family.create_state, *init_args)
  shardings = jax.tree.map(lambda _: par.replicated, abstract)
  manager = checkpoint.create_manager(workdir, config)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  restored = checkpoint.restore_latest(manager, abstract, train_iter, config)
  if restored is None:
    state = jax.jit(family.create_state, out_shardings=shardings)(*init_args)
    start_step = 0
  else:
    start_step, state = restored
    if start_step % k:
      raise ValueError(
          f'The checkpoint is at step {start_step}, not a multiple of '
          f'config.steps_per_call={k}; resume with a steps_per_call that '
          'divides it')
  del init_args
  if config.model.use_feature_cache:
    feature_cache.check_resnet_variables(config, state.resnet_variables())

  writer = metric_writers.create_default_writer(
      workdir, just_logging=process_index > 0, asynchronous=True)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in
                          checkpoint.flatten_dict(config.to_dict()).items()})
  step_fn = make_train_fn(family, par, config)
  eval_fn = par.compile(
      functools.partial(eval_step, colorize=family.colorize),
      donate_state=False)
  sample_fn = par.compile(
      functools.partial(sample_step, colorize=family.colorize),
      donate_state=False, batch_output=True)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer,
      every_steps=config.log_every_steps)
  hooks = [report_progress] if process_index == 0 else []

  preempted = []
  def on_signal(signum, _):
    logging.warning('Received signal %d: saving a checkpoint and exiting.',
                    signum)
    preempted.append(signum)
  old_handlers = {s: signal.signal(s, on_signal)
                  for s in (signal.SIGTERM, signal.SIGINT)}

  sample_batch = next(_eval_batches(config, process_index, process_count), None)
  train_metrics = []   # host copies, merged at each log step
  pending = None       # (step, device metrics) fetched one call late
  step_state = par.to_step_layout(state)
  del state
  images_per_step = config.data.batch_size
  t_log, step = time.time(), start_step

  def flush():
    """Fetches the pending step's metrics; writes a summary at log steps."""
    nonlocal pending, train_metrics, t_log
    if pending is None:
      return
    s, m = pending
    pending = None
    m = par.fetch(m)
    _check_finite(s, m)
    train_metrics.extend(split_metrics(m, k))
    if s % config.log_every_steps == 0 or s == total_steps:
      summary = {f'train/{key}':
                 float(np.mean([x[key] for x in train_metrics])) for key in m}
      now = time.time()
      summary['train/images_per_sec_per_device'] = (
          len(train_metrics) * images_per_step / (now - t_log) /
          jax.device_count())
      writer.write_scalars(s, summary)
      train_metrics, t_log = [], now

  logging.info('Training steps %d..%d on %d device(s), %d process(es).',
               start_step + 1, total_steps, jax.device_count(), process_count)
  try:
    # Each call runs k steps; every *_every_steps is a multiple of k, so the
    # step after a call is where logs, evals and checkpoints fall due.
    for step in range(start_step + k, total_steps + 1, k):
      with report_progress.timed('data'):
        batch = put_train_batches(
            par, [next(train_iter) for _ in range(k)], config)
      with report_progress.timed('step', wait_jax_async_dispatch=False):
        step_state, metrics = step_fn(step_state, batch)
      flush()  # the previous call's, while the device runs this one
      pending = (step, metrics)
      for h in hooks:
        h(step)

      is_last = step == total_steps
      if (step % config.image_every_steps == 0 or is_last) and sample_batch:
        _write_samples(writer, workdir, step, sample_fn, step_state,
                       sample_batch, par)
      if step % config.eval_every_steps == 0 or is_last:
        with report_progress.timed('eval'):
          writer.write_scalars(step, evaluate(eval_fn, step_state, par, config))

      if step % config.checkpoint_every_steps == 0 or is_last or preempted:
        flush()
        with report_progress.timed('checkpoint'):
          checkpoint.save(manager, step, par.from_step_layout(step_state),
                          train_iter, config)
      if preempted:
        logging.warning('Stopped at step %d after signal %d; resume by '
                        'running the same command again.', step, preempted[0])
        break
    flush()
  finally:
    for s, h in old_handlers.items():
      signal.signal(s, h)
    manager.wait_until_finished()
    writer.flush()
  return par.from_step_layout(step_state)


def _write_samples(writer, workdir, step, sample_fn, step_state, batch, par):
  """Gray | generated | real | saliency grid to TensorBoard and a PNG."""
  _, out = sample_fn(step_state, par.put_batch(batch))
  out = _gather_local(out)
  inputs = {k: preprocess.normalize(v) for k, v in batch.items()
            if k in ('gray', 'rgb')}
  n = int(batch['mask'].sum())
  columns = [inputs['gray'][:n], out['fake_rgb'][:n], inputs['rgb'][:n]]
  if 'fake_saliency' in out:
    columns.append(out['fake_saliency'][:n])
  grid = summaries.sample_grid(columns)
  if jax.process_index() == 0:
    writer.write_images(step, {'samples': grid[None]})
    summaries.write_png(os.path.join(workdir, 'samples',
                                     f'step_{step:07d}.png'), grid)


def _gather_local(tree):
  """This process's rows of a batch-sharded output, in batch order (numpy)."""
  def one(x):
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    data = np.concatenate([np.asarray(s.data) for s in shards])
    return data.reshape((-1,) + data.shape[-3:])
  return jax.tree.map(one, tree)
