"""The GAN's networks: U-Net generator, PatchGAN critic, ResNet-18 branch.

`build_models(config.model)` turns the config's model section into Flax
modules; `init_resnet_variables` loads (or, if allowed, randomly creates)
the ResNet-18 weights; `resnet_init` is its random initialisation (also
used under `jax.eval_shape` for shapes alone).
"""

import dataclasses
import os
from typing import Any, Optional

from absl import logging
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxcolor.models import conv_impl
from jaxcolor.models import generator as generator_lib
from jaxcolor.models import patchgan
from jaxcolor.models import resnet18

Generator = generator_lib.Generator
PatchGAN = patchgan.PatchGAN
ResNet18 = resnet18.ResNet18

# config.model.output -> the generator's image channels (before saliency).
OUTPUT_CHANNELS = {'rgb': 3, 'chroma': 2}

CONVERT_HELP = (
    "Download torchvision's ImageNet weights resnet18-f37072fd.pth "
    '(https://download.pytorch.org/models/resnet18-f37072fd.pth) or timm\'s '
    'resnet18 model.safetensors, convert them once with `python -m '
    'jaxcolor.models.convert_resnet18 --src resnet18-f37072fd.pth --out '
    'resnet18.msgpack` and pass '
    '--config.model.resnet18_weights=resnet18.msgpack')


@dataclasses.dataclass(frozen=True)
class Models:
  """The three networks: stateless module definitions (variables live apart)."""
  generator: nn.Module
  critic: nn.Module
  resnet: Optional[nn.Module]


def resolve_conv_impl(name: str) -> str:
  """config.model.conv_impl -> an implementation of `conv_impl.IMPLS`.

  'auto' is 'fast' on CPUs, whose forms were chosen from XLA CPU timings,
  and XLA's own convolutions on GPUs and TPUs.
  """
  if name == 'auto':
    return 'fast' if jax.default_backend() == 'cpu' else 'xla'
  if name not in conv_impl.IMPLS:
    raise ValueError(f'config.model.conv_impl={name!r}; expected auto or one '
                     f'of {conv_impl.IMPLS}')
  return name


def build_models(model_config: ml_collections.ConfigDict,
                 dtype: Any = jnp.float32) -> Models:
  """config.model -> Models; `dtype` is the compute dtype (params: float32)."""
  mc = model_config
  dtype = jnp.dtype(dtype)
  impl = resolve_conv_impl(mc.get('conv_impl', 'auto'))
  output = mc.output
  if output not in OUTPUT_CHANNELS:
    raise ValueError(f'config.model.output={output!r}; expected one of '
                     f'{tuple(OUTPUT_CHANNELS)}')
  gen = Generator(
      widths=tuple(mc.g_features),
      out_channels=OUTPUT_CHANNELS[output] + int(mc.saliency_head),
      zero_init_output=output == 'chroma',
      kernel_size=mc.g_kernel_size,
      stride1_layer=mc.g_stride1_layer,
      fusion_layer=mc.fusion_layer,
      use_features=bool(mc.use_resnet),
      negative_slope=mc.negative_slope,
      dtype=dtype,
      conv_impl=impl)
  critic = PatchGAN(
      features=tuple(mc.d_features),
      kernel_sizes=tuple(mc.d_kernel_sizes),
      strides=tuple(mc.d_strides),
      paddings=tuple(mc.d_paddings),
      negative_slope=mc.negative_slope,
      dtype=dtype,
      conv_impl=impl)
  resnet = ResNet18(dtype=dtype) if mc.use_resnet else None
  return Models(generator=gen, critic=critic, resnet=resnet)


def resnet_init(rng: jax.Array) -> dict:
  """Random ResNet-18 variables {'params', 'batch_stats'} (ImageNet head)."""
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  return dict(ResNet18().init(rng, x, return_logits=True))


def init_resnet_variables(model_config: ml_collections.ConfigDict,
                          rng: jax.Array) -> dict:
  """ResNet-18 variables {'params', 'batch_stats'} for the fusion branch.

  Loads `model_config.resnet18_weights` when set. Otherwise raises if
  `require_resnet18_weights`, else warns once and returns a random init.

  Raises:
    FileNotFoundError: resnet18_weights names a missing file.
    ValueError: weights are required but none are configured, or the file
      is not a converted ResNet-18.
  """
  path = model_config.resnet18_weights
  if path:
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'config.model.resnet18_weights={path!r} does not exist. '
          f'{CONVERT_HELP}.')
    return resnet18.load_variables(path)
  if model_config.require_resnet18_weights:
    raise ValueError(
        'The ResNet-18 branch needs ImageNet weights '
        '(config.model.require_resnet18_weights=True) but '
        f'config.model.resnet18_weights is empty. {CONVERT_HELP}; or set '
        '--config.model.require_resnet18_weights=False to train with a '
        'randomly initialised ResNet branch.')
  logging.warning('config.model.resnet18_weights is empty: the ResNet-18 '
                  'branch is randomly initialised (not ImageNet features).')
  return jax.jit(resnet_init)(rng)
