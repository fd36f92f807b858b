"""The feature cache's record schema: model outputs stored once by prepare.

With `config.data.use_feature_cache=True`, `--mode=prepare` asks the model
family for a featurizer (the GAN family's runs its frozen ResNet-18) and
stores each example's features as 'resnet_features' (KEY) in its record, in
`config.data.feature_cache_dtype`. The records' metadata entry under KEY
says how they were made: {'dtype', 'shape', ..., 'fingerprint'} (a sha256
of the variables that made them, `fingerprint`). Training then feeds them
to the model instead of recomputing them.

This module knows only the schema; the family checks the model-specific
fields (`check_entry`).
"""

import hashlib
from typing import Any

import ml_collections
import numpy as np

from jaxcolor.data import sources

KEY = 'resnet_features'
DTYPES = ('float16', 'bfloat16', 'float32')


def check_dtype(data_config: Any) -> str:
  dtype = data_config.feature_cache_dtype
  if dtype not in DTYPES:
    raise ValueError(f'config.data.feature_cache_dtype={dtype!r}; expected '
                     f'one of {DTYPES}')
  return dtype


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the setting to change when the data config
  cannot use cached features (bad dtype, augmentation on, no prepared_dir).
  """
  data = config.data
  check_dtype(data)
  augment = [k for k in ('random_crop', 'random_flip') if data[k]]
  if augment:
    raise ValueError(
        'config.data.use_feature_cache=True needs the same input every epoch'
        ', but ' + ' and '.join(f'config.data.{k}' for k in augment) +
        ' is on; switch it off or set use_feature_cache=False')
  prepared = data.prepared_dir
  if not prepared:
    raise ValueError(
        'config.data.use_feature_cache=True reads the features from prepared '
        'records, but config.data.prepared_dir is empty; write them with '
        '--mode=prepare --config.data.use_feature_cache=True')


def entry(config: ml_collections.ConfigDict, meta: dict[str, Any]
          ) -> dict[str, Any]:
  """The records' feature entry (see `check_config` for the config's).

  Raises:
    ValueError: records without features, or with another cache dtype.
  """
  data, prepared = config.data, config.data.prepared_dir
  found = meta.get(KEY)
  if not found:
    raise ValueError(
        f'The prepared records in {prepared} hold no cached features; re-run '
        '--mode=prepare with --config.data.use_feature_cache=True, or set '
        'config.data.use_feature_cache=False')
  check_entry(found, {'dtype': data.feature_cache_dtype},
              {'dtype': 'config.data.feature_cache_dtype'}, prepared)
  return found


def check_entry(found: dict[str, Any], want: dict[str, Any],
                names: dict[str, str], prepared: str) -> None:
  """Raises ValueError naming each field where `found` differs from `want`."""
  diffs = [f'{names.get(k, k)}: records have {found.get(k)!r}, config has '
           f'{v!r}' for k, v in want.items() if found.get(k) != v]
  if diffs:
    raise ValueError(
        f'The cached features in {prepared} were written with other '
        'settings:\n  ' + '\n  '.join(diffs) + '\nRe-run --mode=prepare with '
        'this config, or use the settings above.')


def fingerprint(variables: Any) -> str:
  """sha256 over the variables' paths, dtypes, shapes and bytes (sorted)."""
  import flax  # pylint: disable=g-import-not-at-top
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  digest = hashlib.sha256()
  for path in sorted(flat):
    x = flat[path]
    if hasattr(x, 'addressable_data'):  # a (replicated) jax.Array
      x = x.addressable_data(0)
    x = np.ascontiguousarray(np.asarray(x))
    digest.update(f'{"/".join(path)}|{x.dtype.str}|{x.shape}|'.encode())
    digest.update(x.tobytes())
  return digest.hexdigest()


def describe(found: dict[str, Any]) -> str:
  """Where an entry's weights came from, in words."""
  if found.get('resnet18_weights'):
    return f'weights file {found["resnet18_weights"]!r}'
  return f'random initialisation with config.seed={found.get("seed")}'


def cast(features: np.ndarray, dtype_name: str) -> np.ndarray:
  """float32 features -> the cache dtype (numpy rounds to nearest even, as
  XLA's convert does)."""
  return np.asarray(features).astype(sources.decode_dtype(dtype_name))
