"""The paper's critic and generator losses.

All images are float in [-1, 1]; critic outputs are patch probabilities in
(0, 1). Saliency maps enter the weighted L1 as weights in [0, 1] (mapped from
[-1, 1]): a signed weight would flip the sign of the colours it weights.
"""

import jax.numpy as jnp


def critic_loss(d_real: jnp.ndarray, d_fake: jnp.ndarray) -> jnp.ndarray:
  """D = E[D(fake)] - E[D(real)]; d_* are (B, h, w, 1) patch maps in (0, 1)."""
  return jnp.mean(d_fake) - jnp.mean(d_real)


def gan_loss(d_fake: jnp.ndarray) -> jnp.ndarray:
  """The generator's adversarial term: -E[D(G(x))]."""
  return -jnp.mean(d_fake)


def l1_loss(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  return jnp.mean(jnp.abs(a - b))


def to_unit(x: jnp.ndarray) -> jnp.ndarray:
  """[-1, 1] -> [0, 1]."""
  return (x + 1.0) * 0.5


def saliency_l1_loss(fake_rgb, fake_saliency, real_rgb, real_saliency):
  """L1(sal_fake * RGB_fake, sal_real * RGB_real).

  Args:
    fake_rgb, real_rgb: (B, H, W, 3) in [-1, 1].
    fake_saliency, real_saliency: (B, H, W, 1) in [-1, 1], used as [0, 1].
  """
  return l1_loss(to_unit(fake_saliency) * fake_rgb,
                 to_unit(real_saliency) * real_rgb)


def generator_losses(fake_rgb, fake_saliency, real_rgb, real_saliency, d_fake,
                     *, l1_weight, gan_weight, saliency_weight):
  """G = l1_weight*L1 + gan_weight*GAN + saliency_weight*saliency-L1.

  `fake_saliency`/`real_saliency` may be None (a model without a saliency
  head): that term is then zero. Returns (total, dict of the parts).
  """
  l1 = l1_loss(fake_rgb, real_rgb)
  gan = gan_loss(d_fake)
  if fake_saliency is None:
    sal = jnp.zeros((), l1.dtype)
  else:
    sal = saliency_l1_loss(fake_rgb, fake_saliency, real_rgb, real_saliency)
  total = l1_weight * l1 + gan_weight * gan + saliency_weight * sal
  return total, {'l1': l1, 'gan': gan, 'saliency': sal}
