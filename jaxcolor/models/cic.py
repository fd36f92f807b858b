"""The CIC baseline network (Zhang et al., ECCV 2016, as the paper's §5.2).

Lightness in, a distribution over the Q = 313 quantised ab bins out, at 1/4
of the input resolution. Five blocks of 3x3 convs, each conv followed by
ReLU and each block by BatchNorm; blocks 1-3 end in a stride-2 conv; the
up-sampling after block 4 is block 5's first layer, a 4x4 stride-2
transposed conv (as the release's conv8_1). A 1x1 conv gives the logits;
the softmax over Q lives in the loss and in decoding.

Layer table at 64 px with the default widths (64, 128, 256, 512, 256) and
convs per block (2, 2, 3, 3, 3) (B = batch):

  block  layer         op                  out (H,W,C)
  1      conv1_1       conv 3x3/1           64,64,64
         conv1_2       conv 3x3/2           32,32,64     BN
  2      conv2_1       conv 3x3/1           32,32,128
         conv2_2       conv 3x3/2           16,16,128    BN
  3      conv3_1..2    conv 3x3/1           16,16,256
         conv3_3       conv 3x3/2            8,8,256     BN
  4      conv4_1..3    conv 3x3/1            8,8,512     BN
  5      conv5_1       convT 4x4/2 (up)     16,16,256
         conv5_2..3    conv 3x3/1           16,16,256    BN
  out    logits        conv 1x1             16,16,313    no activation

The input side must be a multiple of 8; the ab map is a quarter of it:
16 x 16 at 64 px, 32 x 32 at 128 px, 64 x 64 at 256 px (Zhang et al.'s
own size: 256 in, ab at 64 x 64). Input: L / 50 - 1 in [-1, 1]
(`jaxcolor.color.normalize_l`).
"""

from typing import Any, Optional, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from jaxcolor.models import conv_impl
from jaxcolor.models import conv_transpose
from jaxcolor.color.ab_bins import NUM_BINS

DOWNSAMPLE = 8   # total stride before the up-sampling
OUTPUT_STRIDE = 4  # input size / output size

_he_normal = nn.initializers.kaiming_normal()


class CICNet(nn.Module):
  """(B,H,W,1) normalised L -> logits (B,H/4,W/4,num_bins) float32.

  Attributes:
    widths: channels of blocks 1..5.
    num_convs: conv layers per block (block 5 counts its up-sampling layer).
    num_bins: Q, the number of ab bins (313).
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
    axis_name: mapped axis over which BatchNorm averages batch statistics
      (e.g. 'data' under pmap / shard_map), None for per-device statistics.
    bn_momentum: BatchNorm running-average momentum.

  Variables: {'params', 'batch_stats'}; call with mutable=['batch_stats']
  when train=True.
  """
  widths: Sequence[int] = (64, 128, 256, 512, 256)
  num_convs: Sequence[int] = (2, 2, 3, 3, 3)
  num_bins: int = NUM_BINS
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, l_norm: jax.Array, train: bool) -> jax.Array:
    if len(self.widths) != 5 or len(self.num_convs) != 5:
      raise ValueError(f'CICNet needs 5 widths and 5 conv counts; got '
                       f'{tuple(self.widths)} and {tuple(self.num_convs)}')
    if min(self.num_convs) < 1:
      raise ValueError(f'every block needs >= 1 conv; got {self.num_convs}')
    if (l_norm.ndim != 4 or l_norm.shape[-1] != 1
        or l_norm.shape[1] % DOWNSAMPLE or l_norm.shape[2] % DOWNSAMPLE):
      raise ValueError(f'CICNet input must be (B,H,W,1) with H and W '
                       f'multiples of {DOWNSAMPLE}; got {l_norm.shape}')

    def conv(h, width, stride, name):
      return nn.relu(nn.Conv(
          width, (3, 3), strides=(stride, stride), padding='SAME',
          dtype=self.dtype, kernel_init=_he_normal, name=name)(h))

    def norm(h, name):
      return nn.BatchNorm(
          use_running_average=not train, momentum=self.bn_momentum,
          epsilon=1e-5, axis_name=self.axis_name, dtype=self.dtype,
          name=name)(h)

    h = l_norm.astype(self.dtype)
    for b in range(4):
      n = self.num_convs[b]
      for i in range(n):
        stride = 2 if (b < 3 and i == n - 1) else 1
        h = conv(h, self.widths[b], stride, f'conv{b + 1}_{i + 1}')
      h = norm(h, f'bn{b + 1}')
    h = nn.relu(conv_impl.ConvTranspose(
        self.widths[4], 4, 2, padding=conv_transpose.transpose_padding(4, 2),
        impl='phase', dtype=self.dtype, kernel_init=_he_normal,
        name='conv5_1')(h))
    for i in range(1, self.num_convs[4]):
      h = conv(h, self.widths[4], 1, f'conv5_{i + 1}')
    h = norm(h, 'bn5')
    # LeCun init (no ReLU follows): initial logits near uniform over Q.
    logits = nn.Conv(self.num_bins, (1, 1), dtype=self.dtype,
                     name='logits')(h)
    return logits.astype(jnp.float32)
