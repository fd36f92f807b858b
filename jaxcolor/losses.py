"""The GAN objectives (the paper's and three standard ones), L1 terms, CIC.

All images are float in [-1, 1]. The critic network emits patch logits;
each objective owns its final map: 'paper' takes probabilities
sigmoid(logits) (the paper's critic ends in a sigmoid), the others work on
the logits. Saliency maps enter the weighted L1 as weights in [0, 1]
(mapped from [-1, 1]): a signed weight would flip the sign of the colours
it weights.
"""

import jax
import jax.numpy as jnp

from jaxcolor.data import preprocess

# config.loss.gan: the adversarial objective of the GAN family.
GAN_OBJECTIVES = ('paper', 'nonsaturating', 'hinge', 'lsgan')

# config.loss.gan -> (critic loss, generator's GAN term): report's titles.
OBJECTIVE_TITLES = {
    'paper': ('critic loss: E[D(fake)] − E[D(real)]', 'GAN: −E[D(G(x))]'),
    'nonsaturating': ('critic loss: BCE (softplus on logits)',
                      'GAN: E[softplus(−D(G(x)))]'),
    'hinge': ('critic loss: E[relu(1−D(real))] + E[relu(1+D(fake))]',
              'GAN: −E[D(G(x))] (logits)'),
    'lsgan': ('critic loss: ½E[(D(real)−1)²] + ½E[D(fake)²]',
              'GAN: ½E[(D(G(x))−1)²]'),
}


def critic_loss(d_real: jnp.ndarray, d_fake: jnp.ndarray) -> jnp.ndarray:
  """D = E[D(fake)] - E[D(real)]; d_* are (B, h, w, 1) patch maps in (0, 1)."""
  return jnp.mean(d_fake) - jnp.mean(d_real)


def gan_loss(d_fake: jnp.ndarray) -> jnp.ndarray:
  """The generator's adversarial term: -E[D(G(x))]."""
  return -jnp.mean(d_fake)


def critic_value(objective: str, logits: jnp.ndarray) -> jnp.ndarray:
  """What `objective` scores (and WGAN-GP differentiates): probabilities
  sigmoid(logits) for 'paper', the logits themselves otherwise."""
  return jax.nn.sigmoid(logits) if objective == 'paper' else logits


def critic_objective(objective: str, real_logits: jnp.ndarray,
                     fake_logits: jnp.ndarray) -> jnp.ndarray:
  """The critic's loss on (B, h, w, 1) patch logits of real and fake pairs.

  paper          E[σ(D(fake))] − E[σ(D(real))]
  nonsaturating  E[softplus(−D(real))] + E[softplus(D(fake))]  (= BCE)
  hinge          E[relu(1 − D(real))] + E[relu(1 + D(fake))]
  lsgan          ½E[(D(real) − 1)²] + ½E[D(fake)²]
  """
  r, f = real_logits, fake_logits
  if objective == 'paper':
    return critic_loss(jax.nn.sigmoid(r), jax.nn.sigmoid(f))
  if objective == 'nonsaturating':
    return jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
  if objective == 'hinge':
    return jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
  if objective == 'lsgan':
    return 0.5 * jnp.mean((r - 1.0) ** 2) + 0.5 * jnp.mean(f ** 2)
  raise ValueError(f'config.loss.gan={objective!r}; expected one of '
                   f'{GAN_OBJECTIVES}')


def generator_adversarial(objective: str,
                          fake_logits: jnp.ndarray) -> jnp.ndarray:
  """The generator's adversarial term on the critic's logits of its output.

  paper −E[σ(D(G(x)))]; nonsaturating E[softplus(−D(G(x)))] (= −E[log σ]);
  hinge −E[D(G(x))]; lsgan ½E[(D(G(x)) − 1)²].
  """
  f = fake_logits
  if objective == 'paper':
    return gan_loss(jax.nn.sigmoid(f))
  if objective == 'nonsaturating':
    return jnp.mean(jax.nn.softplus(-f))
  if objective == 'hinge':
    return -jnp.mean(f)
  if objective == 'lsgan':
    return 0.5 * jnp.mean((f - 1.0) ** 2)
  raise ValueError(f'config.loss.gan={objective!r}; expected one of '
                   f'{GAN_OBJECTIVES}')


def l1_loss(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  return jnp.mean(jnp.abs(a - b))


def weighted_l1_loss(a: jnp.ndarray, b: jnp.ndarray,
                     pixel_weights: jnp.ndarray) -> jnp.ndarray:
  """mean(w * |a - b|): a, b (B, H, W, C); pixel_weights (B, H, W).

  A plain mean of weighted terms (not divided by the batch's weight sum),
  so it splits over devices like the unweighted L1.
  """
  return jnp.mean(pixel_weights[..., None] * jnp.abs(a - b))


def saliency_l1_loss(fake_rgb, fake_saliency, real_rgb, real_saliency):
  """L1(sal_fake * RGB_fake, sal_real * RGB_real).

  Args:
    fake_rgb, real_rgb: (B, H, W, 3) in [-1, 1].
    fake_saliency, real_saliency: (B, H, W, 1) in [-1, 1], used as [0, 1].
  """
  return l1_loss(preprocess.to_unit(fake_saliency) * fake_rgb,
                 preprocess.to_unit(real_saliency) * real_rgb)


def generator_losses(fake_rgb, fake_saliency, real_rgb, real_saliency, gan,
                     *, l1_weight, gan_weight, saliency_weight,
                     l1_pixel_weights=None):
  """G = l1_weight*L1 + gan_weight*GAN + saliency_weight*saliency-L1.

  `gan` is the adversarial term (`generator_adversarial`).
  `fake_saliency`/`real_saliency` may be None (a model without a saliency
  head): that term is then zero. `l1_pixel_weights` (B, H, W), if given,
  weight the L1 per pixel (`weighted_l1_loss`). Returns (total, dict of
  the parts).
  """
  if l1_pixel_weights is None:
    l1 = l1_loss(fake_rgb, real_rgb)
  else:
    l1 = weighted_l1_loss(fake_rgb, real_rgb, l1_pixel_weights)
  if fake_saliency is None:
    sal = jnp.zeros((), l1.dtype)
  else:
    sal = saliency_l1_loss(fake_rgb, fake_saliency, real_rgb, real_saliency)
  total = l1_weight * l1 + gan_weight * gan + saliency_weight * sal
  return total, {'l1': l1, 'gan': gan, 'saliency': sal}


def cic_loss(logits: jnp.ndarray, soft_targets: jnp.ndarray,
             weights: jnp.ndarray) -> jnp.ndarray:
  """Class-rebalanced multinomial cross-entropy of the CIC baseline.

  mean over pixels of weights * (-sum_q soft_targets_q * log_softmax(logits)_q).

  Args:
    logits: (B, h, w, Q) network output.
    soft_targets: (B, h, w, Q) soft-encoded ground truth, rows summing to 1.
    weights: (B, h, w) per-pixel rebalancing weights.
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.sum(soft_targets.astype(jnp.float32) * log_p, axis=-1)
  return jnp.mean(weights.astype(jnp.float32) * ce)


def gradient_penalty(critic_fn, gray, real_rgb, fake_rgb, rng):
  """WGAN-GP: E[(||grad_x D(gray ⊕ x)|| - 1)^2] at x = e*real + (1-e)*fake.

  Args:
    critic_fn: (B,H,W,4) -> (B,h,w,1), the value the objective scores
      (`critic_value`).
    gray: (B,H,W,1); real_rgb, fake_rgb: (B,H,W,3), all in [-1, 1].
    rng: key for the per-example mixing weights e ~ U(0, 1).
  """
  e = jax.random.uniform(rng, (real_rgb.shape[0], 1, 1, 1), real_rgb.dtype)
  mixed = e * real_rgb + (1.0 - e) * fake_rgb

  def critic_sum(x):  # patches of different examples do not interact
    return jnp.sum(critic_fn(jnp.concatenate([gray, x], axis=-1)))

  grads = jax.grad(critic_sum)(mixed)
  norms = jnp.sqrt(jnp.sum(grads ** 2, axis=(1, 2, 3)) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)
