"""The GAN family's train state and a fresh one.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from jaxcolor import models as models_lib
from jaxcolor.families.gan import optim

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
    f = models_lib.fusion_size(mc, size)
    feats = jnp.zeros((1, f, f, 512), jnp.float32)
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

  g_tx, d_tx = optim.make_optimizers(config, *optim.learning_rates(config))
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params, g_opt_state=g_tx.init(g_params),
      d_params=d_params, d_opt_state=d_tx.init(d_params),
      resnet=frozen, rng=jax.random.PRNGKey(config.seed + 1),
      ema_g_params=(jax.tree.map(jnp.copy, g_params)
                    if optim.ema_enabled(config) else None))
