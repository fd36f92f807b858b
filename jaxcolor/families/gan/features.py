"""The ResNet side of the feature cache: prepare's featurizer for the GAN
family's frozen branch.
"""

import functools
from typing import Any

import jax
import numpy as np

from jaxcolor.data import feature_cache
from jaxcolor.data import preprocess
from jaxcolor.models import resnet18

@functools.lru_cache(maxsize=None)
def _features_fn(input_size: int, fusion_size: int):
  """Jitted (ResNet variables, uint8 gray (B,S,S,1)) -> float32 features."""
  # The live branch's module in float32 training (and its features are
  # float32 whatever the compute dtype).
  resnet = resnet18.ResNet18()

  def features(variables, gray):
    return resnet18.fusion_features(
        resnet, variables, preprocess.normalize(gray), input_size=input_size,
        fusion_size=fusion_size)
  return jax.jit(features)


class Featurizer:
  """Adds the frozen ResNet's fusion features to examples, in batches.

  `add(name, example)` and `finish()` return the (name, example) pairs whose
  features are ready, in the order they were added; each example gains
  feature_cache.KEY: (f, f, 512) in the cache dtype. One batch is in flight
  on the device while the next is gathered. The features are those of the
  live branch (`resnet18.fusion_features` in float32 on the same gray map);
  the only difference is the rounding to the cache dtype.
  """
  BATCH_SIZE = 64  # examples per ResNet call
  TAIL_MULTIPLE = 8  # a split's last batch is padded to a multiple of this

  def __init__(self, variables: Any, metadata: dict, input_size: int,
               fusion_size: int):
    self.variables = variables
    self.metadata = metadata
    self._features = _features_fn(input_size, fusion_size)
    self._pending = []
    self._in_flight = None

  def add(self, name: str, example: dict[str, np.ndarray]
          ) -> list[tuple[str, dict[str, np.ndarray]]]:
    self._pending.append((name, example))
    if len(self._pending) < self.BATCH_SIZE:
      return []
    return self._dispatch()

  def finish(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    ready = self._dispatch() if self._pending else []
    return ready + self._collect()

  def _dispatch(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Starts the pending batch; returns the previous one's examples."""
    batch, self._pending = self._pending, []
    gray = np.stack([e['gray'] for _, e in batch])
    pad = (-len(batch) % self.TAIL_MULTIPLE
           if len(batch) < self.BATCH_SIZE else 0)
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
    feats = feature_cache.cast(feats, self.metadata['dtype'])
    return [(name, {**example, feature_cache.KEY: feats[i]})
            for i, (name, example) in enumerate(batch)]
