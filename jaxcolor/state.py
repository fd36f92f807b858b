"""The one GAN train state, and the optimisers that update it."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcolor import models as models_lib


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
    """The ResNet's full {'params', 'batch_stats'}, wherever its params live."""
    if self.resnet is None:
      return None
    if 'resnet' in self.g_params:
      return {'params': self.g_params['resnet'], **self.resnet}
    return self.resnet


def make_optimizers(config: ml_collections.ConfigDict):
  """Adam for the generator and for the critic: (g_tx, d_tx)."""
  o = config.optim
  g_tx = optax.adam(o.g_learning_rate, b1=o.b1, b2=o.b2)
  d_tx = optax.adam(o.d_learning_rate, b1=o.b1, b2=o.b2)
  return g_tx, d_tx


def generator_input_channels(model_config) -> int:
  return 1 + int(model_config.use_edge)


def create_train_state(rng: jax.Array, resnet_variables: Any, *,
                       models: models_lib.Models,
                       config: ml_collections.ConfigDict) -> TrainState:
  """Initialises a fresh state (pure; jit it with output shardings).

  Args:
    rng: typed PRNG key (e.g. `jax.random.key(seed, impl='rbg')`).
    resnet_variables: ResNet-18 variables (loaded or random), or None when
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

  resnet = None
  if mc.use_resnet:
    if mc.freeze_resnet:
      resnet = resnet_variables
    else:
      g_params['resnet'] = resnet_variables['params']
      resnet = {k: v for k, v in resnet_variables.items() if k != 'params'}

  g_tx, d_tx = make_optimizers(config)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params, g_opt_state=g_tx.init(g_params),
      d_params=d_params, d_opt_state=d_tx.init(d_params),
      resnet=resnet, rng=jax.random.PRNGKey(config.seed + 1))
