"""Adam on the kernel library (config.optim.adam_impl; jaxcolor/kernels/
adam.py): optax.adam's values and state, in place without copies, and
which form each setting runs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxcolor.families.gan import optim
from jaxcolor.kernels import adam as adam_kernel
from jaxcolor.kernels import library

pytestmark = pytest.mark.skipif(bool(library.load()), reason=library.load())

B1, B2 = 0.5, 0.999


def _config(impl, parallel='shard_map'):
  return ml_collections.ConfigDict({
      'parallel': parallel,
      'optim': {'b1': B1, 'b2': B2, 'adam_impl': impl}})


def _params(seed=0):
  """A leaf of several of the kernel's 64K-element parts (the last one
  short), a small one, and a scalar."""
  rng = np.random.default_rng(seed)
  return {'kernel': jnp.asarray(rng.standard_normal((3, 70001)), jnp.float32),
          'head': {'bias': jnp.asarray(rng.standard_normal(5), jnp.float32),
                   'scale': jnp.asarray(1.5, jnp.float32)}}


@pytest.mark.parametrize('schedule', [False, True])
def test_updates_are_optaxs_up_to_rounding(schedule):
  """Six updates, donated as in the trainer: the moments to a few float32
  ulps (bit for bit on a Zen 4; whether a multiply-add is fused depends on
  the CPU), the parameters to float32 rounding (XLA rewrites optax's
  divisions), the state optax's tree (a schedule's count advances too)."""
  lr = (optax.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 10, 1e-5)
        if schedule else 1e-3)
  tx = optax.adam(lr, b1=B1, b2=B2)

  def step(impl):
    return jax.jit(lambda p, s, g: optim.apply_update(
        tx, lr, _config(impl), g, p, s), donate_argnums=(0, 1))

  want, got = step('optax'), step('kernel')
  p_want, s_want = _params(), tx.init(_params())
  p_got, s_got = _params(), tx.init(_params())
  rng = np.random.default_rng(1)
  for i in range(6):
    grads = jax.tree.map(lambda x: jnp.asarray(
        rng.standard_normal(x.shape) * (i + 1), jnp.float32), _params())
    p_want, s_want = want(p_want, s_want, grads)
    p_got, s_got = got(p_got, s_got, grads)
  assert jax.tree.structure(s_got) == jax.tree.structure(s_want)
  for a, b in zip(jax.tree.leaves(s_got), jax.tree.leaves(s_want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
  for a, b in zip(jax.tree.leaves(p_got), jax.tree.leaves(p_want)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  assert float(jnp.max(jnp.abs(p_got['kernel'] - _params()['kernel']))) > 0


def test_the_update_is_in_place():
  """Donated parameters and moments: the compiled update copies none of
  them (in the trainer's step under pmap XLA does: adam.py's docstring)."""
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  fn = jax.jit(lambda p, m, v, g: adam_kernel.update(
      p, m, v, g, lr=jnp.float32(1e-3), count=jnp.int32(1), b1=B1, b2=B2,
      eps=1e-8), donate_argnums=(0, 1, 2))
  hlo = fn.lower(params, zeros, zeros, params).compile().as_text()
  assert 'jaxcolor_adam' in hlo and ' copy(' not in hlo


def test_bad_operands_are_a_clear_error():
  params = {'w': jnp.ones((4,), jnp.bfloat16)}
  with pytest.raises(TypeError, match='float32 leaves only'):
    adam_kernel.update(params, params, params, params, lr=jnp.float32(1e-3),
                       count=jnp.int32(1), b1=B1, b2=B2, eps=1e-8)


def test_auto_takes_the_kernel_under_shard_map_on_cpus(monkeypatch):
  assert optim.resolve_adam_impl('auto', 'shard_map') == 'kernel'
  assert optim.resolve_adam_impl('auto', 'pmap') == 'optax'
  assert optim.resolve_adam_impl('kernel', 'pmap') == 'kernel'
  assert optim.resolve_adam_impl('optax', 'shard_map') == 'optax'
  with pytest.raises(ValueError, match=r"adam_impl='adamw'; expected one of"):
    optim.resolve_adam_impl('adamw', 'pmap')
  monkeypatch.setattr(library, 'load', lambda: 'the kernel library is not '
                      'built: python -m jaxcolor.kernels.build')
  assert optim.resolve_adam_impl('auto', 'shard_map') == 'optax'
  with pytest.raises(ValueError, match="adam_impl='kernel': the kernel "
                     'library is not built'):
    optim.resolve_adam_impl('kernel', 'shard_map')
