"""U-Net generator with a fused global-feature input (the paper's G).

Layer table at 64 px with the default widths (B = batch):

  layer  op                           out (H,W,C)   notes
  d1     conv 4x4/1 SAME (pad 1,2)     64,64,64      the stride-1 layer
  d2     conv 4x4/2 pad 1              32,32,128
  d3     conv 4x4/2 pad 1              16,16,256
  d4     conv 4x4/2 pad 1               8,8,512
  d5     conv 4x4/2 pad 1               4,4,512
  d6     conv 4x4/2 pad 1               2,2,512      ⊕ ResNet features -> 1024
  d7     conv 4x4/2 pad 1               1,1,512      bottleneck
  u1     convT 4x4/2 (torch pad 1)      2,2,512      ⊕ d6 -> 1536
  u2     convT 4x4/2                    4,4,512      ⊕ d5 -> 1024
  u3     convT 4x4/2                    8,8,512      ⊕ d4 -> 1024
  u4     convT 4x4/2                   16,16,256     ⊕ d3 -> 512
  u5     convT 4x4/2                   32,32,128     ⊕ d2 -> 256
  u6     convT 4x4/2                   64,64,64      ⊕ d1 -> 128
  u7     conv 4x4/1 SAME (pad 1,2)     64,64,4       tanh (RGB, saliency);
                                                     2+1 channels (chroma,
                                                     saliency) with
                                                     model.output='chroma'

Every layer but u7 is followed by LeakyReLU; there is no normalisation.
The decoder layer u(8-i) mirrors d_i: same stride, and it is a plain SAME
conv where d_i has stride 1 (a stride-1 transposed conv is a conv). With
`stride1_layer=0` (128 px) all fourteen layers have stride 2.

Other sizes (`stride1_for_side`; config.model.g_stride1_layer=-1 derives
it): N encoder layers halve the side N times, or N - 1 times with a
stride-1 first layer, so the bottleneck is S / 2^N or S / 2^(N-1). The
paper's 7 layers reach 1 x 1 at 64 px (d1 at stride 1) and 128 px (none);
at 256 px they stop at 2 x 2, and 8 layers (pix2pix's unet_256) or 9 with
a stride-1 d1 (SCGAN's released 256-px U-Net) reach 1 x 1.
"""

from typing import Any, Optional, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from jaxcolor.models import conv_impl
from jaxcolor.models import conv_transpose

xavier_uniform = nn.initializers.xavier_uniform()


Padding = tuple[tuple[int, int], tuple[int, int]]


def same_padding(kernel: int, stride: int) -> Padding:
  """XLA SAME padding for a side divisible by `stride`.

  k4 s2 -> (1, 1) (= PyTorch padding=1); k4 s1 -> (1, 2).
  """
  total = max(kernel - stride, 0)
  pad = (total // 2, total - total // 2)
  return (pad, pad)


def stride1_for_side(num_layers: int, side: int) -> int:
  """The derived stride-1 layer for a `side` x `side` input.

  0 (every layer at stride 2) where `side` is a multiple of 2^num_layers,
  else 1 (d1 keeps the resolution, as the paper at 64 px) where it is a
  multiple of 2^(num_layers - 1). The bottleneck is then as small as these
  layers can make it (1 x 1 at side 2^num_layers or 2^(num_layers - 1)).

  Raises:
    ValueError: `side` is not a positive multiple of 2^(num_layers - 1).
  """
  if side > 0 and side % 2 ** num_layers == 0:
    return 0
  if side > 0 and side % 2 ** (num_layers - 1) == 0:
    return 1
  raise ValueError(f'Generator input must be (B,H,W,C) with H and W '
                   f'divisible by {2 ** (num_layers - 1)} ({num_layers} '
                   f'encoder layers, one at stride 1); got side {side}')


def total_stride(num_layers: int, stride1_layer: int) -> int:
  """Input side / bottleneck side."""
  return 2 ** (num_layers - int(stride1_layer > 0))


class Generator(nn.Module):
  """U-Net: (B,H,W,C_in) in [-1,1] -> (B,H,W,out_channels) in [-1,1] (tanh).

  Attributes:
    widths: encoder widths d1..dN (config g_features; N = 7 in the paper);
      the decoder mirrors them and its last layer emits `out_channels`.
    out_channels: 3 (RGB) or 2 (chroma) + 1 if the saliency head is on.
    zero_init_output: the last layer's kernel starts at zero (its output is
      then tanh(0) = 0 whatever the input: a chroma head starts at gray).
    kernel_size: square kernel of every layer (4).
    stride1_layer: 1-based encoder layer with stride 1, 0 for none, -1:
      derived from the input's side (`stride1_for_side`).
    fusion_layer: 1-based encoder layer whose activation gets the global
      features concatenated (used only when `use_features`).
    use_features: whether __call__ takes ResNet features.
    negative_slope: LeakyReLU slope.
    dtype: compute dtype; parameters stay float32, the output is float32.
    conv_impl: how convolutions are computed (`conv_impl.IMPLS`); every
      choice has the same parameters and gives the same function.
  """
  widths: Sequence[int] = (64, 128, 256, 512, 512, 512, 512)
  out_channels: int = 4
  zero_init_output: bool = False
  kernel_size: int = 4
  stride1_layer: int = 1
  fusion_layer: int = 6
  use_features: bool = True
  negative_slope: float = 0.2
  dtype: Any = jnp.float32
  conv_impl: str = 'fast'

  def _kernel_init(self, last: bool):
    if last and self.zero_init_output:
      return nn.initializers.zeros
    return xavier_uniform

  def strides(self, side: Optional[int] = None) -> list[int]:
    """Each encoder layer's stride; `side` (the input's) resolves -1."""
    n = len(self.widths)
    layer = self.stride1_layer
    if layer == -1 and side is not None:
      layer = stride1_for_side(n, side)
    if not 0 <= layer <= n:
      raise ValueError(f'g_stride1_layer={self.stride1_layer} must be in '
                       f'0..{n} (0: every layer has stride 2; -1: derived '
                       'from the input size)')
    return [1 if i + 1 == layer else 2 for i in range(n)]

  @nn.compact
  def __call__(self, x: jax.Array,
               features: Optional[jax.Array] = None) -> jax.Array:
    """x: (B,H,W,C_in); features: (B,f,f,512) sized like d_{fusion_layer}."""
    n, k = len(self.widths), self.kernel_size
    if x.ndim != 4:
      raise ValueError(f'Generator input must be (B,H,W,C); got {x.shape}')
    strides = self.strides(x.shape[1])
    if self.use_features and not 1 <= self.fusion_layer <= n:
      raise ValueError(f'fusion_layer={self.fusion_layer} must be in 1..{n}')
    if self.use_features != (features is not None):
      raise ValueError('Generator: ResNet features must be given iff the model '
                       f'uses them (use_features={self.use_features}, got '
                       f'{"None" if features is None else features.shape})')
    total = 1
    for s in strides:
      total *= s
    if x.ndim != 4 or x.shape[1] % total or x.shape[2] % total:
      raise ValueError(f'Generator input must be (B,H,W,C) with H and W '
                       f'divisible by {total}; got {x.shape}')
    act = lambda y: nn.leaky_relu(y, self.negative_slope)  # noqa: E731
    conv = lambda f, s, name, init=xavier_uniform: conv_impl.Conv(  # noqa: E731
        f, k, s, padding=same_padding(k, s), impl=self.conv_impl,
        dtype=self.dtype, kernel_init=init,
        bias_init=nn.initializers.zeros, name=name)

    h = x.astype(self.dtype)
    skips = []
    for i, (width, s) in enumerate(zip(self.widths, strides)):
      h = act(conv(width, s, f'down{i + 1}')(h))
      if self.use_features and i + 1 == self.fusion_layer:
        if features.shape[:3] != h.shape[:3]:
          raise ValueError(
              f'ResNet features {features.shape} do not match d{i + 1} output '
              f'{h.shape}: set model.fusion_size to {h.shape[1]}')
        h = jnp.concatenate([h, features.astype(self.dtype)], axis=-1)
      skips.append(h)

    h = skips.pop()  # the bottleneck feeds u1 without a skip of its own
    for j in range(n):
      m = n - 1 - j  # mirrored encoder layer (0-based)
      width = self.widths[m - 1] if m > 0 else self.out_channels
      name = f'up{j + 1}'
      last = j == n - 1
      if strides[m] == 1:
        h = conv(width, 1, name, self._kernel_init(last))(h)
      else:
        h = conv_impl.ConvTranspose(
            width, k, strides[m],
            padding=conv_transpose.transpose_padding(k, strides[m]),
            impl=self.conv_impl, dtype=self.dtype,
            kernel_init=self._kernel_init(last),
            bias_init=nn.initializers.zeros, name=name)(h)
      if last:
        return jnp.tanh(h).astype(jnp.float32)
      h = jnp.concatenate([act(h), skips.pop()], axis=-1)
    raise AssertionError('unreachable')
