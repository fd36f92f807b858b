"""ResNet-18 (torchvision layout) in Flax linen, and the fusion-feature path.

The module mirrors `torchvision.models.resnet18` layer for layer so that
torchvision's (or timm's) ImageNet weights load through
`jaxcolor.models.convert_resnet18`. BatchNorm always uses its running
statistics: the branch is a fixed feature extractor, also when fine-tuned.

Variables: {'params': ..., 'batch_stats': ...}; submodule names follow
torchvision's with '.' replaced by '_' (layer1_0/conv1, layer2_0/downsample_bn).
"""

import functools
from typing import Any

import flax
from flax import linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxcolor.models import conv_impl
from jaxcolor.runtime import files

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = (64, 128, 256, 512)  # layer1..layer4 widths, 2 BasicBlocks each
FEATURE_CHANNELS = 512
FORMAT = 'jaxcolor.resnet18.flax.v1'  # marker stored in converted weight files


def _batch_norm(name: str, dtype: Any) -> nn.BatchNorm:
  # torch: eps 1e-5, momentum 0.1 == Flax decay 0.9 (unused: inference only).
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def _conv(features: int, k: int, s: int, p: int, name: str, dtype: Any,
          impl: str) -> conv_impl.Conv:
  """A bias-free k x k conv: `nn.Conv`'s parameters, `impl`'s computation."""
  return conv_impl.Conv(features, k, s, padding=((p, p), (p, p)), impl=impl,
                        use_bias=False, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs + BN; a 1x1 projection + BN where the shape changes."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_conv, dtype=self.dtype, impl=self.conv_impl)
    y = conv(self.features, 3, self.strides, 1, 'conv1')(x)
    y = nn.relu(_batch_norm('bn1', self.dtype)(y))
    y = conv(self.features, 3, 1, 1, 'conv2')(y)
    y = _batch_norm('bn2', self.dtype)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.strides, 0, 'downsample_conv')(x)
      x = _batch_norm('downsample_bn', self.dtype)(x)
    return nn.relu(y + x)


class ResNet18(nn.Module):
  """torchvision resnet18: (B,S,S,3) normalised -> layer4 (B,S/32,S/32,512).

  Attributes:
    num_classes: width of the `fc` head (1000 for ImageNet weights).
    dtype: compute dtype; parameters stay float32.
    conv_impl: how convolutions are computed (`conv_impl.IMPLS`); every
      choice has the same parameters and gives the same function.
  """
  num_classes: int = 1000
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, return_logits: bool = False):
    """Returns layer4 features, or (features, logits (B, num_classes)) if asked.

    Features and logits are float32 whatever the compute dtype.
    """
    x = _conv(64, 7, 2, 3, 'conv1', self.dtype, self.conv_impl)(x)
    x = nn.relu(_batch_norm('bn1', self.dtype)(x))
    x = max_pool_3x3_s2(x)
    for stage, width in enumerate(STAGES, start=1):
      for block in range(2):
        strides = 2 if stage > 1 and block == 0 else 1
        x = BasicBlock(width, strides, dtype=self.dtype,
                       conv_impl=self.conv_impl,
                       name=f'layer{stage}_{block}')(x)
    features = x.astype(jnp.float32)
    if not return_logits:
      return features
    pooled = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(pooled)
    return features, logits.astype(jnp.float32)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))).

  (B,H,W,C) -> (B,ceil(H/2),ceil(W/2),C), same values. In bfloat16 as the
  maximum of the window's 9 strided slices, one fused loop: XLA's CPU
  backend runs a bfloat16 reduce_window 2-3x slower than that, and a
  float32 one faster (docs/benchmarks.md).
  """
  if x.dtype != jnp.bfloat16:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  b, h, w, c = x.shape
  # Padded as the bits: a bfloat16 pad is computed in float32 and its
  # result kept in float32, twice the bytes for the slices to read.
  neg_inf = np.array(-np.inf, jnp.bfloat16).view(np.uint16)
  padded = lax.bitcast_convert_type(
      lax.pad(lax.bitcast_convert_type(x, jnp.uint16), jnp.uint16(neg_inf),
              ((0, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0))), jnp.bfloat16)
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  taps = [lax.slice(padded, (0, i, j, 0),
                    (b, i + 2 * (ho - 1) + 1, j + 2 * (wo - 1) + 1, c),
                    (1, 2, 2, 1))
          for i in range(3) for j in range(3)]
  return functools.reduce(jnp.maximum, taps)


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
  """torch.nn.functional.adaptive_avg_pool2d for NHWC: (B,H,W,C) -> (B,o,o,C).

  Bin i covers [floor(i*n/o), ceil((i+1)*n/o)); bins overlap when o does not
  divide n (7 -> 2: rows 0..3 and 3..6) and repeat pixels when o > n.
  """

  def pool_axis(x, axis):
    n = x.shape[axis]
    bins = []
    for i in range(out_size):
      start, end = (i * n) // out_size, -(-((i + 1) * n) // out_size)
      bins.append(jnp.mean(jax.lax.slice_in_dim(x, start, end, axis=axis),
                           axis=axis, keepdims=True))
    return jnp.concatenate(bins, axis=axis)

  return pool_axis(pool_axis(x, 1), 2)


def preprocess_gray(gray: jax.Array, input_size: int) -> jax.Array:
  """Gray (B,H,W,1) in [-1,1] -> ImageNet-normalised (B,S,S,3) float32.

  [-1,1] -> [0,1] -> bilinear resize to S x S with half-pixel centres and no
  antialiasing (torch's F.interpolate(mode='bilinear', align_corners=False))
  -> 3 identical channels -> (x - mean) / std.
  """
  x = (gray.astype(jnp.float32) + 1.0) * 0.5
  b = x.shape[0]
  x = jax.image.resize(x, (b, input_size, input_size, 1), method='bilinear',
                       antialias=False)
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (x - mean) / std  # broadcasts the 1 channel to 3


def fusion_features(resnet: nn.Module, variables: Any, gray: jax.Array, *,
                    input_size: int, fusion_size: int) -> jax.Array:
  """The generator's global features from the grayscale input.

  Args:
    resnet: a `ResNet18` module.
    variables: its {'params', 'batch_stats'}.
    gray: (B,H,W,1) in [-1,1].
    input_size: side the gray image is resized to before the ResNet (224).
    fusion_size: side of the pooled output (the fusion layer's resolution).

  Returns:
    (B, fusion_size, fusion_size, 512) float32: layer4 adaptively
    average-pooled. Pure; freezing (stop_gradient) is the caller's choice.
  """
  if gray.ndim != 4 or gray.shape[-1] != 1:
    raise ValueError(
        f'fusion_features expects gray (B,H,W,1), got {gray.shape}')
  feats = resnet.apply(variables, preprocess_gray(gray, input_size))
  return adaptive_avg_pool(feats.astype(jnp.float32), fusion_size)


def save_variables(path: str, variables: Any) -> None:
  """Writes ResNet-18 variables as a msgpack file with a format marker."""
  variables = jax.tree.map(np.asarray, flax.core.unfreeze(variables))
  payload = {'format': FORMAT, 'variables': variables}
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(payload))


def load_variables(path: str) -> dict:
  """Reads a file written by `convert_resnet18` -> {'params', 'batch_stats'}.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a converted ResNet-18 weight file.
  """
  try:
    data = files.read_regular(path)
  except ValueError as e:  # a FIFO, a device: never opened
    raise ValueError(f'{path}: {e}') from e
  try:
    payload = flax.serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated types
    raise ValueError(
        f'{path} is not a jaxcolor ResNet-18 weight file (msgpack decode '
        f'failed: {e}). Convert torchvision weights with '
        '`python -m jaxcolor.models.convert_resnet18`.') from e
  if not isinstance(payload, dict) or payload.get('format') != FORMAT:
    raise ValueError(f'{path} is not a jaxcolor ResNet-18 weight file (format '
                     f'marker {FORMAT!r} missing). Convert torchvision weights '
                     'with `python -m jaxcolor.models.convert_resnet18`.')
  variables = payload['variables']
  expected = jax.eval_shape(
      lambda: ResNet18().init(jax.random.PRNGKey(0),
                              jnp.zeros((1, 32, 32, 3)), return_logits=True))
  got = jax.tree.map(lambda a: a.shape, variables)
  want = jax.tree.map(lambda a: a.shape, flax.core.unfreeze(expected))
  if got != want:
    raise ValueError(f'{path}: variables do not match ResNet18 '
                     '(wrong architecture or a damaged file).')
  return jax.tree.map(jnp.asarray, variables)


def output_size(input_size: int) -> int:
  """layer4's side for a given input side (stride 32, torch rounding)."""
  s = input_size
  s = (s + 2 * 3 - 7) // 2 + 1        # conv1 7x7/2 pad 3
  s = (s + 2 * 1 - 3) // 2 + 1        # maxpool 3x3/2 pad 1
  for _ in range(3):                  # layer2..4 first conv 3x3/2 pad 1
    s = (s + 2 * 1 - 3) // 2 + 1
  return s

