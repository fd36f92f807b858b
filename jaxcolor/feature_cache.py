"""Frozen-ResNet feature cache: the fusion features, computed once by prepare.

With a frozen ResNet-18 branch and no random crop or flip, the generator's
global features depend only on an example's stored gray map. So
`--mode=prepare` with `config.model.use_feature_cache=True` computes them
once, with the ResNet variables training will use (`resnet_variables`), and
stores each example's (fusion_size, fusion_size, 512) array as
'resnet_features' in its record, in `config.model.feature_cache_dtype`.
Training then feeds them to the generator instead of running the ResNet
(`train.generate`).

The features are those of the live branch: `resnet18.fusion_features` in
float32 on the same normalised gray map; the only difference is the rounding
to the cache dtype (none for float32). The records' metadata entry
'resnet_features' holds the dtype, shape, ResNet input size and a
fingerprint of the ResNet variables; `check_config` and
`check_resnet_variables` refuse a config or a state that does not match.
"""

import functools
import hashlib
from typing import Any, Optional

import ml_collections
import numpy as np

from jaxcolor.data import preprocess
from jaxcolor.data import sources

KEY = 'resnet_features'
DTYPES = ('float16', 'bfloat16', 'float32')
FEATURE_CHANNELS = 512
BATCH_SIZE = 64  # examples per ResNet call in prepare
_TAIL_MULTIPLE = 8  # a split's last batch is padded to a multiple of this


def _check_dtype(model_config: Any) -> str:
  dtype = model_config.feature_cache_dtype
  if dtype not in DTYPES:
    raise ValueError(f'config.model.feature_cache_dtype={dtype!r}; expected '
                     f'one of {DTYPES}')
  return dtype


def check_model(model_config: Any) -> None:
  """Raises ValueError unless the model can use cached ResNet features."""
  _check_dtype(model_config)
  if not model_config.use_resnet:
    raise ValueError('config.model.use_feature_cache=True needs the ResNet '
                     'branch, but config.model.use_resnet is False; set '
                     'use_feature_cache=False')
  if not model_config.freeze_resnet:
    raise ValueError(
        'config.model.use_feature_cache=True needs a frozen ResNet branch '
        '(cached features cannot follow a trained ResNet), but '
        'config.model.freeze_resnet is False; set one of them the other way')


def shape(model_config: Any) -> list[int]:
  """[fusion_size, fusion_size, 512]: one example's cached features."""
  return [model_config.fusion_size, model_config.fusion_size,
          FEATURE_CHANNELS]


def describe(entry: dict[str, Any]) -> str:
  """Where a metadata entry's ResNet weights came from, in words."""
  if entry.get('resnet18_weights'):
    return f'weights file {entry["resnet18_weights"]!r}'
  return f'random initialisation with config.seed={entry.get("seed")}'


def check_config(config: ml_collections.ConfigDict,
                 meta: Optional[dict[str, Any]] = None) -> None:
  """Refuses a config or records that cannot use the cached features.

  Args:
    config: the training config (config.model.use_feature_cache=True).
    meta: the prepared records' metadata; read from prepared_dir if None.

  Raises:
    ValueError: naming the setting to change.
  """
  mc, data = config.model, config.data
  check_model(mc)
  augment = [k for k in ('random_crop', 'random_flip') if data[k]]
  if augment:
    raise ValueError(
        'config.model.use_feature_cache=True needs the same input every epoch'
        ', but ' + ' and '.join(f'config.data.{k}' for k in augment) +
        ' is on; switch it off or set use_feature_cache=False')
  prepared = data.prepared_dir
  if not prepared:
    raise ValueError(
        'config.model.use_feature_cache=True reads the features from prepared '
        'records, but config.data.prepared_dir is empty; write them with '
        '--mode=prepare --config.model.use_feature_cache=True')
  if meta is None:
    meta = sources.read_metadata(prepared)
  entry = meta.get(KEY)
  if not entry:
    raise ValueError(
        f'The prepared records in {prepared} hold no ResNet features; re-run '
        '--mode=prepare with --config.model.use_feature_cache=True, or set '
        'config.model.use_feature_cache=False')
  want = {'dtype': mc.feature_cache_dtype, 'shape': shape(mc),
          'resnet_input_size': mc.resnet_input_size}
  names = {'dtype': 'config.model.feature_cache_dtype',
           'shape': 'feature shape (config.model.fusion_size)',
           'resnet_input_size': 'config.model.resnet_input_size'}
  diffs = [f'{names[k]}: records have {entry.get(k)!r}, config has {v!r}'
           for k, v in want.items() if entry.get(k) != v]
  if diffs:
    raise ValueError(
        f'The ResNet features in {prepared} were written with other '
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


def check_resnet_variables(config: ml_collections.ConfigDict,
                           variables: Any) -> None:
  """Raises ValueError unless the records' features come from `variables`."""
  prepared = config.data.prepared_dir
  entry = sources.read_metadata(prepared).get(KEY) or {}
  now = fingerprint(variables)
  if entry.get('fingerprint') != now:
    current = describe({'resnet18_weights': config.model.resnet18_weights,
                        'seed': config.seed})
    raise ValueError(
        f'The ResNet features in {prepared} were computed with other ResNet '
        f'weights: the records used {describe(entry)} (fingerprint '
        f'{str(entry.get("fingerprint"))[:12]}), this run uses {current} '
        f'(fingerprint {now[:12]}). Re-run --mode=prepare with this config, '
        'or use the weights above.')


def resnet_variables(config: ml_collections.ConfigDict) -> Any:
  """The ResNet variables a fresh training run of `config` starts from."""
  from jaxcolor import train  # pylint: disable=g-import-not-at-top
  return train.gan_init_args(config, train.init_key(config.seed))[1]


@functools.lru_cache(maxsize=None)
def _features_fn(input_size: int, fusion_size: int):
  """Jitted (ResNet variables, uint8 gray (B,S,S,1)) -> float32 features."""
  # pylint: disable=g-import-not-at-top
  import jax
  from jaxcolor.models import resnet18
  # pylint: enable=g-import-not-at-top
  # The live branch's module in float32 training (and its features are
  # float32 whatever the compute dtype).
  resnet = resnet18.ResNet18()

  def features(variables, gray):
    return resnet18.fusion_features(
        resnet, variables, preprocess.normalize(gray), input_size=input_size,
        fusion_size=fusion_size)
  return jax.jit(features)


class Featurizer:
  """Adds cached features to examples, in batches, one batch in flight.

  `add(name, example)` and `finish()` return the (name, example) pairs whose
  features are ready, in the order they were added; each example gains
  KEY: (f, f, 512) in the cache dtype. JAX runs in this process only.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    mc = config.model
    check_model(mc)
    self._dtype = np.dtype(sources.decode_dtype(_check_dtype(mc)))
    self.variables = resnet_variables(config)
    self._features = _features_fn(mc.resnet_input_size, mc.fusion_size)
    self.metadata = {
        'dtype': mc.feature_cache_dtype, 'shape': shape(mc),
        'resnet_input_size': mc.resnet_input_size,
        'fusion_size': mc.fusion_size, 'compute_dtype': 'float32',
        'resnet18_weights': mc.resnet18_weights, 'seed': config.seed,
        'fingerprint': fingerprint(self.variables),
    }
    self._pending = []
    self._in_flight = None

  def add(self, name: str, example: dict[str, np.ndarray]
          ) -> list[tuple[str, dict[str, np.ndarray]]]:
    self._pending.append((name, example))
    if len(self._pending) < BATCH_SIZE:
      return []
    return self._dispatch()

  def finish(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    ready = self._dispatch() if self._pending else []
    return ready + self._collect()

  def _dispatch(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Starts the pending batch; returns the previous one's examples."""
    batch, self._pending = self._pending, []
    gray = np.stack([e['gray'] for _, e in batch])
    pad = -len(batch) % _TAIL_MULTIPLE if len(batch) < BATCH_SIZE else 0
    gray = np.concatenate([gray, np.zeros((pad,) + gray.shape[1:],
                                          gray.dtype)])
    started = (batch, self._features(self.variables, gray))  # asynchronous
    ready = self._collect()
    self._in_flight = started
    return ready

  def _collect(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    if self._in_flight is None:
      return []
    batch, feats = self._in_flight
    self._in_flight = None
    # numpy rounds to nearest even, as XLA's convert does.
    feats = np.asarray(feats).astype(self._dtype)
    return [(name, {**example, KEY: feats[i]})
            for i, (name, example) in enumerate(batch)]
