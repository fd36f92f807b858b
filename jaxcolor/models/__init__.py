"""The GAN's networks: U-Net generator, PatchGAN critic, ResNet-18 branch.

`build_models(config.model)` turns the config's model section into Flax
modules; `resolve_sizes` / `size_table` derive and check the keys that
follow the training size (config.data.image_size); `init_resnet_variables`
loads (or, if allowed, randomly creates) the ResNet-18 weights;
`resnet_init` is its random initialisation (also used under
`jax.eval_shape` for shapes alone).
"""

import dataclasses
import os
from typing import Any, Optional

from absl import logging
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcolor.kernels import library
from jaxcolor.models import conv_impl
from jaxcolor.models import generator as generator_lib
from jaxcolor.models import patchgan
from jaxcolor.models import resnet18
from jaxcolor.runtime import xla_flags

Generator = generator_lib.Generator
PatchGAN = patchgan.PatchGAN
ResNet18 = resnet18.ResNet18

# config.model values meaning "derived from config.data.image_size".
DERIVED_STRIDE1_LAYER = -1  # g_stride1_layer
DERIVED_FUSION_SIZE = 0     # fusion_size

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


# (compute dtype, CPU feature flag) -> what conv_impl='auto' picks on a CPU
# with that flag, where a measurement showed a form faster than 'fast'
# there (docs/benchmarks.md, "bfloat16 on a CPU with AVX512-BF16", "float32
# on oneDNN" and "Winograd"): oneDNN's convolutions with Winograd's method
# for the wide stride-1 ones ('winograd', jaxcolor/kernels) on CPUs with
# AVX512-BF16, in both dtypes; in bfloat16 else 'mm', whose matmuls are the
# one bfloat16 contraction XLA CPU runs in bfloat16. The first of a rule's
# forms that this installation can run is taken ('winograd' and 'dnnl' need
# the kernel library built). Rules are tried in order. Intel Xeons with AMX
# list 'avx512_bf16' too; in bfloat16 they keep 'dnnl', whose bfloat16
# convolutions run on the AMX tiles, which Winograd's float32 matmuls do not
# use (unmeasured: no such machine yet).
FASTER_THAN_FAST: dict[tuple[str, str], tuple[str, ...]] = {
    ('bfloat16', 'amx_bf16'): ('dnnl', 'mm'),
    ('bfloat16', 'avx512_bf16'): ('winograd', 'mm'),
    ('float32', 'avx512_bf16'): ('winograd',),
}


def _why_not(impl: str) -> str:
  """'' where this process can run `impl`, else why not."""
  if impl not in conv_impl.KERNEL_IMPLS:
    return ''
  return library.why_unavailable()


def resolve_conv_impl(name: str, dtype: Any = 'float32',
                      features: Optional[frozenset[str]] = None,
                      rules: Optional[dict[tuple[str, str], tuple[str, ...]]]
                      = None) -> str:
  """config.model.conv_impl -> an implementation of `conv_impl.IMPLS`.

  'auto' is XLA's own convolutions on GPUs and TPUs. On CPUs it is the
  first runnable form `rules` (default `FASTER_THAN_FAST`) name for the
  compute `dtype` and one of the CPU's `features` (default: this CPU's
  flags), and 'fast', whose forms were chosen from XLA CPU timings, where
  none does.
  """
  if name == 'auto':
    if jax.default_backend() != 'cpu':
      return 'xla'
    rules = FASTER_THAN_FAST if rules is None else rules
    dtype = jnp.dtype(dtype).name
    for chosen in xla_flags.cpu_rule(rules, dtype, features) or ():
      why = _why_not(chosen)
      if not why:
        logging.info("config.model.conv_impl='auto': %r for %s on this CPU "
                     '(models.FASTER_THAN_FAST).', chosen, dtype)
        return chosen
      logging.info("config.model.conv_impl='auto': not %r for %s (%s).",
                   chosen, dtype, why)
    return 'fast'
  if name not in conv_impl.IMPLS:
    raise ValueError(f'config.model.conv_impl={name!r}; expected auto or one '
                     f'of {conv_impl.IMPLS}')
  why = _why_not(name)
  if why:
    raise ValueError(f'config.model.conv_impl={name!r}: {why}')
  return name


def _sizes_that_work(step: int) -> str:
  return ', '.join(str(step * m) for m in range(1, 5)) + ', ...'


def size_table(model_config: ml_collections.ConfigDict, image_size: int
               ) -> dict[str, int]:
  """What the networks do at `image_size` px (sentinels derived).

  Returns:
    {'g_stride1_layer', 'fusion_size', 'bottleneck' (the generator's
    innermost side), 'critic_map' (the patch map's side)}.

  Raises:
    ValueError: one line naming the config keys, when the networks cannot
      take `image_size` (not a multiple of the generator's total stride,
      too small for the critic, a fusion size or layer that does not fit).
  """
  mc, s = model_config, int(image_size)
  n = len(mc.g_features)
  layer = int(mc.g_stride1_layer)
  if layer == DERIVED_STRIDE1_LAYER:
    try:
      layer = generator_lib.stride1_for_side(n, s)
    except ValueError:
      step = 2 ** (n - 1)
      raise ValueError(
          f'config.data.image_size={s}: the generator\'s {n} encoder layers '
          f'(config.model.g_features) take multiples of {step} '
          f'({_sizes_that_work(step)}); set data.image_size to one, or give '
          f'model.g_features at most {_max_layers(s)} layers') from None
  elif not 0 <= layer <= n:
    raise ValueError(f'config.model.g_stride1_layer={layer} must be in 0..{n} '
                     '(0: every layer has stride 2; -1: derived from '
                     'config.data.image_size)')
  total = generator_lib.total_stride(n, layer)
  if s % total or s < total:
    raise ValueError(
        f'config.data.image_size={s} is not a multiple of {total}, the '
        f'generator\'s total stride ({n} layers in config.model.g_features, '
        f'model.g_stride1_layer={layer}): sizes that work are '
        f'{_sizes_that_work(total)}; or set model.g_stride1_layer=-1 to '
        'derive it from the size')
  fusion = int(mc.fusion_size)
  if 1 <= mc.fusion_layer <= n:
    strides = [1 if i + 1 == layer else 2 for i in range(n)]
    side = s // int(np.prod(strides[:mc.fusion_layer]))
    if fusion == DERIVED_FUSION_SIZE:
      fusion = side
    elif mc.use_resnet and fusion != side:
      raise ValueError(
          f'config.model.fusion_size={fusion} does not fit the generator: '
          f'encoder layer {mc.fusion_layer} (model.fusion_layer) outputs '
          f'{side}x{side} at {s} px; set model.fusion_size={side} (or 0: '
          'derived from config.data.image_size)')
  elif mc.use_resnet:
    raise ValueError(f'config.model.fusion_layer={mc.fusion_layer} must be in '
                     f'1..{n} (the layers of config.model.g_features)')
  critic_map = patchgan.output_side(s, mc.d_kernel_sizes, mc.d_strides,
                                    mc.d_paddings)
  if critic_map < 1:
    raise ValueError(
        f'config.data.image_size={s} is too small for the critic '
        '(config.model.d_kernel_sizes, d_strides, d_paddings): its patch '
        'map would be empty')
  return {'g_stride1_layer': layer, 'fusion_size': fusion,
          'bottleneck': s // total, 'critic_map': critic_map}


def _max_layers(side: int) -> int:
  """The most encoder layers that take `side` (one of them at stride 1)."""
  twos = 0
  while side > 0 and side % 2 ** (twos + 1) == 0:
    twos += 1
  return twos + 1


def resolve_sizes(model_config: ml_collections.ConfigDict,
                  image_size: int) -> ml_collections.ConfigDict:
  """Writes the derived g_stride1_layer (-1) and fusion_size (0) for
  `image_size` into `model_config` (in place; given values stay), so the
  config saved with a run names what it ran. A size the networks cannot
  take is left for `size_table` to refuse. Returns `model_config`."""
  try:
    table = size_table(model_config, image_size)
  except ValueError:
    return model_config
  for key in ('g_stride1_layer', 'fusion_size'):
    if model_config[key] != table[key]:
      model_config[key] = table[key]
  return model_config


def fusion_size(model_config: ml_collections.ConfigDict,
                image_size: int) -> int:
  """config.model.fusion_size, derived from `image_size` where it is 0."""
  if model_config.fusion_size != DERIVED_FUSION_SIZE:
    return int(model_config.fusion_size)
  return size_table(model_config, image_size)['fusion_size']


def build_models(model_config: ml_collections.ConfigDict,
                 dtype: Any = jnp.float32) -> Models:
  """config.model -> Models; `dtype` is the compute dtype (params: float32)."""
  mc = model_config
  dtype = jnp.dtype(dtype)
  impl = resolve_conv_impl(mc.get('conv_impl', 'auto'), dtype)
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
  resnet = (ResNet18(dtype=dtype, conv_impl=impl) if mc.use_resnet
            else None)
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
