"""A toy model family outside jaxcolor, and its config, in one file.

The model adds one learned colour (3 numbers) to the gray image: a
trainable constant tint. It shows what a new family needs: a state, `init`,
a per-device `train_step`, `colorize`, the inference keys and `predict`.
It is named by import path (`config.model.name = 'toy_family:ToyTint'`),
so no jaxcolor file changes; `--config=tests/toy_family.py` trains it
(with tests/ on PYTHONPATH).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from configs import common
from configs import tiny
from jaxcolor import families
from jaxcolor.color import ycrcb
from jaxcolor.runtime import parallel
from jaxcolor.data import preprocess


@flax.struct.dataclass
class ToyState:
  step: jnp.ndarray
  params: Any      # {'tint': (3,)}, added to gray in [-1, 1]
  opt_state: Any


class ToyTint(families.Family):
  inference_keys = ('params',)

  def _tx(self):
    return optax.adam(self.config.optim.learning_rate)

  def init(self, key):
    del key
    params = {'tint': jnp.zeros((3,), jnp.float32)}
    return ToyState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=self._tx().init(params))

  def _rgb(self, params, gray_uint8):
    return preprocess.normalize(gray_uint8) + params['tint']

  def train_step(self, state, batch):
    target = preprocess.normalize(batch['rgb'])
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(jnp.abs(self._rgb(p, batch['gray']) - target)))(
            state.params)
    grads = jax.lax.pmean(grads, parallel.AXIS)
    updates, opt_state = self._tx().update(grads, state.opt_state)
    state = state.replace(step=state.step + 1, opt_state=opt_state,
                          params=optax.apply_updates(state.params, updates))
    return state, jax.lax.pmean({'loss': loss}, parallel.AXIS)

  def colorize(self, state, batch):
    return {'fake_rgb': jnp.clip(self._rgb(state.params, batch['gray']),
                                 -1.0, 1.0)}

  def predict(self, params, inputs):
    tint = params['params']  # {inference key: its state field}
    rgb = self._rgb(tint, inputs['gray'])  # [-1, 1]
    return ycrcb.chroma_from_rgb(rgb) * 127.5  # 8-bit (Cr, Cb) offsets


def get_config() -> ml_collections.ConfigDict:
  """The shared sections with the tiny config's data and schedule."""
  config = common.get_config()
  small = tiny.get_config()
  config.data = small.data
  for key in ('num_train_steps', 'log_every_steps', 'image_every_steps',
              'eval_every_steps', 'num_eval_batches',
              'checkpoint_every_steps', 'keep_checkpoints'):
    config[key] = small[key]
  config.model = ml_collections.ConfigDict({'name': 'toy_family:ToyTint'})
  config.optim = ml_collections.ConfigDict({'learning_rate': 0.05})
  return config
