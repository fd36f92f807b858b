r"""Converts PyTorch ResNet-18 ImageNet weights to a jaxcolor Flax file.

  python -m jaxcolor.models.convert_resnet18 \
      --src resnet18-f37072fd.pth --out resnet18.msgpack

Sources: torchvision's `resnet18-f37072fd.pth` (needs torch, imported only
for .pth/.pt files) or a timm / Hugging Face `model.safetensors` of resnet18
(read with safetensors' numpy API; no torch). timm's resnet18 uses
torchvision's key names. Every key is mapped and shape-checked: missing,
unexpected or mis-shaped keys give one error that names each of them.

Mapping (torch -> Flax): conv weight OIHW -> kernel HWIO; fc weight (out,in)
-> kernel (in,out); BN weight -> scale, bias -> bias, running_mean ->
batch_stats mean, running_var -> batch_stats var; num_batches_tracked is
dropped. Module paths: 'layer2.0.downsample.0' -> 'layer2_0/downsample_conv',
'layer2.0.downsample.1' -> 'layer2_0/downsample_bn'.
"""

import argparse
import os
import sys
from typing import Mapping

import numpy as np

from jaxcolor.models import resnet18

_BN_FIELDS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'),
              'running_var': ('batch_stats', 'var')}
_IGNORED_SUFFIXES = ('num_batches_tracked',)


def torch_layout(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
  """torchvision resnet18 state_dict keys -> shapes (no num_batches_tracked)."""
  layout = {}

  def bn(prefix, c):
    for field in _BN_FIELDS:
      layout[f'{prefix}.{field}'] = (c,)

  layout['conv1.weight'] = (64, 3, 7, 7)
  bn('bn1', 64)
  cin = 64
  for stage, width in enumerate(resnet18.STAGES, start=1):
    for block in range(2):
      p = f'layer{stage}.{block}'
      layout[f'{p}.conv1.weight'] = (width, cin, 3, 3)
      bn(f'{p}.bn1', width)
      layout[f'{p}.conv2.weight'] = (width, width, 3, 3)
      bn(f'{p}.bn2', width)
      if stage > 1 and block == 0:
        layout[f'{p}.downsample.0.weight'] = (width, cin, 1, 1)
        bn(f'{p}.downsample.1', width)
      cin = width
  layout['fc.weight'] = (num_classes, 512)
  layout['fc.bias'] = (num_classes,)
  return layout


def _flax_path(key: str) -> tuple[str, ...]:
  """Torch key -> Flax path.

  'layer2.0.downsample.1.running_var' ->
  ('batch_stats', 'layer2_0', 'downsample_bn', 'var').
  """
  *module, field = key.split('.')
  if module[0].startswith('layer'):  # layer2.0.<rest>
    rest = module[2:]
    if rest[0] == 'downsample':  # Sequential(conv1x1, BN)
      rest = ['downsample_conv' if rest[1] == '0' else 'downsample_bn']
    module = [f'{module[0]}_{module[1]}'] + rest
  name = module[-1]
  if name.startswith('bn') or name == 'downsample_bn':
    collection, leaf = _BN_FIELDS[field]
  else:
    collection, leaf = 'params', {'weight': 'kernel', 'bias': 'bias'}[field]
  return (collection, *module, leaf)


def _to_flax(key: str, value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # conv OIHW -> HWIO
    return np.transpose(value, (2, 3, 1, 0))
  if key == 'fc.weight':
    return value.T
  return value


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """torchvision/timm resnet18 state dict -> Flax {'params','batch_stats'}.

  Raises:
    ValueError: listing every missing, unexpected and mis-shaped key.
  """
  layout = torch_layout()
  cleaned = {}
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    cleaned[key[len('module.'):] if key.startswith('module.') else key] = value
  missing = [k for k in layout if k not in cleaned]
  unexpected = [k for k in cleaned if k not in layout]
  misshaped = [f'{k}: expected {layout[k]}, got {tuple(np.shape(v))}'
               for k, v in cleaned.items()
               if k in layout and tuple(np.shape(v)) != layout[k]]
  if missing or unexpected or misshaped:
    lines = ['State dict is not a torchvision/timm resnet18:']
    lines += [f'  missing key: {k}' for k in missing]
    lines += [f'  unexpected key: {k}' for k in unexpected]
    lines += [f'  wrong shape: {m}' for m in misshaped]
    raise ValueError('\n'.join(lines))
  variables = {'params': {}, 'batch_stats': {}}
  for key in layout:
    path = _flax_path(key)
    node = variables
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(
        _to_flax(key, np.asarray(cleaned[key], np.float32)))
  return variables


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .pth/.pt (torch) or .safetensors file -> {key: float32 array}."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'no such weight file: {path}')
  if not os.path.isfile(path):
    raise ValueError(f'{path} is not a file')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.safetensors':
    # pylint: disable-next=g-import-not-at-top
    from safetensors.numpy import load_file
    try:
      tensors = load_file(path)
    except Exception as e:  # pylint: disable=broad-except
      # safetensors raises its own SafetensorError for a damaged file.
      raise ValueError(f'{path} is not a readable .safetensors file '
                       f'({type(e).__name__}: {e}); expected timm\'s / '
                       'Hugging Face resnet18 model.safetensors') from e
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}
  if ext in ('.pth', '.pt', '.bin'):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          f'reading {path} needs PyTorch (pip install torch); or convert '
          "timm's resnet18 model.safetensors, which needs no torch") from e
    try:
      obj = torch.load(path, weights_only=True, map_location='cpu')
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path} is not a readable PyTorch file '
                       f'({type(e).__name__}: {e}); expected torchvision\'s '
                       'resnet18-f37072fd.pth') from e
    if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
      obj = obj['state_dict']
    if not isinstance(obj, dict):
      raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict')
    return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()
            if hasattr(v, 'detach')}
  raise ValueError(f'unknown weight file type {ext!r} for {path}: expected '
                   '.pth/.pt (torchvision) or .safetensors (timm/Hugging Face)')


def convert_file(src: str, out: str) -> dict:
  """Converts `src` and writes the Flax file `out`; returns the variables."""
  variables = convert_state_dict(read_state_dict(src))
  resnet18.save_variables(out, variables)
  return variables


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m jaxcolor.models.convert_resnet18', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--src', required=True,
                      help='resnet18-f37072fd.pth or model.safetensors')
  parser.add_argument('--out', required=True, help='Flax weight file to write')
  args = parser.parse_args(argv)
  try:
    variables = convert_file(args.src, args.out)
  except (OSError, ValueError, ImportError) as e:
    print(f'error: {args.src}: {e}', file=sys.stderr)
    return 1
  n = sum(v.size for v in _leaves(variables['params']))
  print(f'wrote {args.out}: {n:,} parameters '
        f'({len(torch_layout())} tensors converted)')
  return 0


def _leaves(tree):
  for v in tree.values():
    if isinstance(v, dict):
      yield from _leaves(v)
    else:
      yield v


if __name__ == '__main__':
  sys.exit(main())
