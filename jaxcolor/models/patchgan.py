"""PatchGAN critic: six convs on gray ⊕ RGB, LeakyReLU, a patch map of logits.

Default table (64 px input, PyTorch-style symmetric padding):

  layer  op                 out (H,W,C)
  conv1  4x4/2 pad 1        32,32,64
  conv2  4x4/2 pad 1        16,16,128
  conv3  3x3/1 pad 1        16,16,256
  conv4  3x3/1 pad 1        16,16,512
  conv5  4x4/1 pad 1        15,15,512
  conv6  4x4/1 pad 1        14,14,1      logits

The map grows with the input: each conv maps a side n to
(n + 2p - k) // s + 1 (`output_side`). Patch maps of the shipped critics:

  critic (config)                         64 px   128 px   256 px
  paper, configs/default.py               14x14   30x30    62x62
  SCGAN as the paper, scgan_baseline.py   30x30   62x62   126x126
  SCGAN's release, scgan_baseline.py:256  6x6     14x14    30x30

(the last is the released code's 70 x 70 PatchGAN, k7s1p3, three k3s2p1,
two k4s1p1: 30 x 30 at its own 256 px, which is where the 30 x 30 the
paper states comes from).

No normalisation. Each output value is a logit for "this patch is real";
the paper's sigmoid is applied by its objective (`losses.critic_value`),
so every GAN objective shares this one network.
"""

from typing import Any, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from jaxcolor.models import conv_impl


def output_side(side: int, kernel_sizes: Sequence[int],
                strides: Sequence[int], paddings: Sequence[int]) -> int:
  """Side of the patch map for a `side` x `side` input (<= 0: too small)."""
  for k, s, p in zip(kernel_sizes, strides, paddings):
    if side + 2 * p < k:
      return 0
    side = (side + 2 * p - k) // s + 1
  return side


class PatchGAN(nn.Module):
  """(B,H,W,4) gray ⊕ RGB in [-1,1] -> (B,h,w,1) logits, float32.

  Attributes:
    features, kernel_sizes, strides, paddings: one entry per conv; padding p
      pads p pixels on every side (PyTorch Conv2d(padding=p)).
    negative_slope: LeakyReLU slope after every conv but the last.
    dtype: compute dtype; parameters stay float32.
    conv_impl: how convolutions are computed (`conv_impl.IMPLS`).
  """
  features: Sequence[int] = (64, 128, 256, 512, 512, 1)
  kernel_sizes: Sequence[int] = (4, 4, 3, 3, 4, 4)
  strides: Sequence[int] = (2, 2, 1, 1, 1, 1)
  paddings: Sequence[int] = (1, 1, 1, 1, 1, 1)
  negative_slope: float = 0.2
  dtype: Any = jnp.float32
  conv_impl: str = 'fast'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    table = (self.features, self.kernel_sizes, self.strides, self.paddings)
    if len({len(t) for t in table}) != 1:
      raise ValueError('PatchGAN: d_features, d_kernel_sizes, d_strides and '
                       'd_paddings must have the same length; got '
                       f'{[len(t) for t in table]}')
    n = len(self.features)
    h = x.astype(self.dtype)
    for i, (f, k, s, p) in enumerate(zip(*table)):
      h = conv_impl.Conv(f, k, s, padding=((p, p), (p, p)),
                         impl=self.conv_impl, dtype=self.dtype,
                         kernel_init=nn.initializers.xavier_uniform(),
                         bias_init=nn.initializers.zeros,
                         name=f'conv{i + 1}')(h)
      if i < n - 1:
        h = nn.leaky_relu(h, self.negative_slope)
    return h.astype(jnp.float32)
