"""Model families: everything the product asks of a model, one home each.

A family is a class built from the run's config (`build(config)`) that
answers every question the loop, inference, export, benchmark, evaluate,
colorize, report and checkpoint code have about a model; none of them
compares model names. `config.model.name` picks the family:

  'edge_saliency_gan', 'scgan'   jaxcolor.families.gan   (the paper's model
                                  and the SCGAN baseline)
  'cic'                          jaxcolor.families.cic   (Zhang et al.)
  'package.module:Class'         a family outside jaxcolor, by import path

Saved configs (a workdir's, a checkpoint's, a bundle's) are data: one may
name a registered family, or an import path that the command itself allowed
(its own config, or `--allow_family`); anything else is refused before any
import (`config_from_saved`, `upgrade_config`).

Adding a model is one new file with a `Family` subclass and one line in
`REGISTRY` (or, outside the package, naming it by import path).

The interface, in the order a run meets it (per-device functions are pure
functions of (state, batch); batches are the pipeline's uint8 dicts, see
`jaxcolor.data.pipeline`):

  abstract_init_inputs(key)  shapes-only arguments of `init` (no file read,
                             no data pass: a resume needs only these)
  init_inputs(key, data)     the real arguments (weights files, data passes)
  init(*inputs) -> state     pure; jitted with the replicated out-shardings
  train_step(state, batch) -> (state, metrics)   per device, pmean-ed
  colorize(state, batch) -> {'fake_rgb' (B,S,S,3) in [-1, 1], ...}
  sample_columns(outputs)    the family's own columns of the sample grids
  inference_keys             the state fields that make up the model for
                             inference (saved into bundles, partially
                             restored from checkpoints)
  host_inputs(gray) / predict(params, inputs) -> chroma (B,S,S,2): (Cr - 128,
                             Cb - 128) in 8-bit YCrCb units, unclipped
                             (`jaxcolor.color.recombine` lays it on a photo)
  init_from_keys / init_from_source(state, source) -> (state, what)
                             fine-tuning (config.init_from): a fresh state
                             with a saved model's weights
"""

import importlib
import re
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from jaxcolor.runtime import saved_config

# name -> 'module:Class'. Imported on first use, so a light mode imports
# only the family it runs.
REGISTRY = {
    'edge_saliency_gan': 'jaxcolor.families.gan:GANFamily',
    'scgan': 'jaxcolor.families.gan:GANFamily',
    'cic': 'jaxcolor.families.cic:CICFamily',
}

DTYPES = ('float32', 'bfloat16')


def init_key(seed: int) -> jax.Array:
  """Key for parameter init: 'rbg' compiles in seconds where the default
  threefry takes about a second per initializer on a CPU."""
  return jax.random.key(seed, impl='rbg')


class Family:
  """The interface; subclasses override what their model needs.

  Attributes:
    config: the run's full config.
    inference_keys: fields of the train state that inference needs.
    resume_may_differ: dotted config.model keys that may change between a
      checkpoint and the run resuming it (they change how the step computes,
      not what the saved arrays mean); all other model keys must match.
    console_metrics: the step's metrics shown on the console's progress
      line (all of them go to TensorBoard).
    accumulates_gradients: whether `train_step` honours
      config.grad_accum_steps (splits its batch into micro-batches).
  """
  inference_keys: Sequence[str] = ()
  accumulates_gradients: bool = False
  resume_may_differ: Sequence[str] = ()
  console_metrics: Sequence[str] = ('loss',)

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @property
  def name(self) -> str:
    return self.config.model.name

  # ------------------------------------------------------------ config
  @classmethod
  def upgrade_config(cls, saved: dict) -> dict:
    """A config saved by an older jaxcolor -> today's keys (a new dict)."""
    return saved

  def validate(self) -> None:
    """Raises ValueError for model settings that cannot work."""
    compute_dtype(self.config)
    k = self.config.get('grad_accum_steps', 1)
    if k > 1 and not self.accumulates_gradients:
      raise ValueError(f'config.grad_accum_steps={k}: the {self.name!r} model '
                       'does not accumulate gradients; set it to 1')

  @classmethod
  def benchmark_config(cls, config: ml_collections.ConfigDict
                       ) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The config a speed measurement runs (e.g. without weights files a
    training run would require), and notes saying what was changed."""
    return config, []

  # ------------------------------------------------------------ state
  def abstract_init_inputs(self, key: jax.Array) -> tuple:
    return (key,)

  def init_inputs(self, key: jax.Array, data: Any = None) -> tuple:
    """The arguments of `init` for a fresh run; `data` is the run's
    `pipeline.Data` (None where there is none)."""
    del data
    return (key,)

  def init(self, *inputs) -> Any:
    raise NotImplementedError

  def abstract_state(self, key: Optional[jax.Array] = None) -> Any:
    """Shapes and dtypes of the train state; reads no file."""
    key = init_key(self.config.seed) if key is None else key
    return jax.eval_shape(self.init, *self.abstract_init_inputs(key))

  def parameter_trees(self, state: Any) -> dict[str, Any]:
    """{what it is: its parameter tree} of a state or its shapes, for the
    parameter counts of `--mode=benchmark`."""
    del state
    return {}

  def parameter_counts(self, state: Any) -> dict[str, int]:
    """{what it is: number of parameters} (`parameter_trees`)."""
    return {what: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
            for what, tree in self.parameter_trees(state).items()}

  def check_data(self, state: Any, data: Any) -> None:
    """Raises ValueError when `data` cannot feed `state` (e.g. cached
    model outputs made with other weights)."""

  # ------------------------------------------------------------ steps
  def train_step(self, state: Any, batch: dict) -> tuple[Any, dict]:
    raise NotImplementedError

  def colorize(self, state: Any, batch: dict) -> dict:
    raise NotImplementedError

  def sample_columns(self, outputs: dict) -> list:
    """Columns (B,S,S,1|3) in [-1, 1] that sample grids show after gray |
    generated | real, from `colorize`'s outputs (host arrays)."""
    del outputs
    return []

  # ------------------------------------------------------------ inference
  def inference_params(self, state: Any) -> dict:
    """The inference model's arrays out of a train state."""
    return {k: getattr(state, k) for k in self.inference_keys}

  def abstract_inference_params(self) -> dict:
    return self.inference_params(self.abstract_state())

  def to_bundle(self, params: dict) -> dict:
    """Inference params -> the tree stored in a bundle (no None leaves)."""
    return {k: v for k, v in params.items() if v is not None}

  def from_saved(self, tree: dict) -> dict:
    """A bundle's or checkpoint's stored tree -> inference params."""
    return {k: tree.get(k) for k in self.inference_keys}

  def host_inputs(self, gray: np.ndarray) -> dict[str, np.ndarray]:
    """gray uint8 (B,S,S,1) at model size -> `predict`'s host inputs."""
    return {'gray': gray}

  def predict(self, params: dict, inputs: dict) -> jax.Array:
    """Jittable: inference params ({inference key: its state field}) + host
    inputs -> chroma float32 (B,S,S,2), (Cr - 128, Cb - 128) in 8-bit
    YCrCb units (`jaxcolor.color.ycrcb`), not clipped to any gamut."""
    raise NotImplementedError

  # ------------------------------------------------------------ fine-tuning
  @property
  def init_from_keys(self) -> Sequence[str]:
    """The state fields a fine-tuning run reads from a source checkpoint."""
    return self.inference_keys

  def init_from_source(self, state: Any, source: dict) -> tuple[Any, str]:
    """A fresh `state` (or its shapes) with the model of a source.

    Pure. `source` is an export bundle's stored tree (`to_bundle`) or a
    checkpoint's `init_from_keys` fields (None where saved as None). The
    optimiser states, step and rng stay `state`'s. Returns (state, what was
    taken over, for the console). The default: the inference fields.
    """
    params = self.from_saved(source)
    return state.replace(**params), ', '.join(params)

  # ------------------------------------------------------------ prepare
  def feature_shape(self) -> Optional[tuple[int, ...]]:
    """One example's cached features (config.data.use_feature_cache), or
    None for a model that caches none."""
    return None

  def featurizer(self) -> Any:
    """What `prepare` adds to each record with config.data.use_feature_cache
    (see `jaxcolor.data.feature_cache`)."""
    raise ValueError(f'config.data.use_feature_cache=True: the {self.name!r} '
                     'model has no cached features; set it to False')

  # ------------------------------------------------------------ report
  @classmethod
  def report_figures(cls, get, config: dict) -> list[dict]:
    """The training curves of `--mode=report`, as data.

    `get(tag)` returns a logged scalar series or None; `config` is the run's
    saved config. Returns [{'file', 'title', 'panels': [(series by label,
    panel title, y label)]}]. The default: every train/ scalar the step
    logs, one panel each.
    """
    del config
    tags = [t for t in get.tags if t.startswith('train/') and
            t != 'train/images_per_sec_per_device']
    if not tags:
      return []
    return [{'file': 'losses.png', 'title': 'training',
             'panels': [({t[len('train/'):]: get(t)}, t[len('train/'):], '')
                        for t in sorted(tags)]}]


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """config.dtype -> the networks' activation dtype (params stay float32)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if config.dtype not in DTYPES:
    raise ValueError(f'config.dtype={config.dtype!r}; expected one of {DTYPES}')
  return jnp.dtype(config.dtype)


_IMPORT_PATH = re.compile(r'^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$')


def family_class(name: str) -> type:
  """config.model.name -> its Family subclass (the command's own config: a
  saved one goes through `config_from_saved` first).

  Raises:
    ValueError: a name that is neither registered nor an importable
      'module:Class'.
  """
  target = REGISTRY.get(name)
  if target is None and not _IMPORT_PATH.match(str(name)):
    raise ValueError(f'config.model.name={name!r}; expected one of '
                     f'{", ".join(sorted(REGISTRY))} (or a family by import '
                     "path, 'package.module:Class')")
  module_name, _, attr = (target or name).partition(':')
  try:
    cls = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f'config.model.name={name!r}: cannot import the model '
                     f'family {target or name!r} ({e})') from e
  if not (isinstance(cls, type) and issubclass(cls, Family)):
    raise ValueError(f'config.model.name={name!r}: {target or name!r} is not '
                     'a jaxcolor.families.Family')
  return cls


def check_saved_name(name: Any, source: str, allowed: Sequence[str] = ()
                     ) -> None:
  """Refuses a model name read from a file (`source`) unless registered or
  in `allowed` (import paths the command itself named). Imports nothing.

  Raises:
    ValueError: one line naming the file, the name and what to do.
  """
  if isinstance(name, str) and (name in REGISTRY or name in allowed):
    return
  if isinstance(name, str) and _IMPORT_PATH.match(name):
    raise ValueError(
        f'{source} names the model family {name!r} by import path; a model '
        'file cannot choose code to run. If you trust that code, pass '
        f'--allow_family={name}')
  raise ValueError(f'{source} names the model family {name!r}, which is not '
                   f'one of {", ".join(sorted(REGISTRY))}')


def build(config: ml_collections.ConfigDict) -> Family:
  """The model family of config.model.name, built from `config`."""
  family = family_class(config.model.name)(config)
  family.validate()
  return family


def upgrade_config(saved: dict, allowed: Sequence[str] = ()) -> dict:
  """A saved config (plain dict) -> today's keys, whatever its age.

  Shared moves first (keys that changed section for every model), then the
  family's own. Only a registered family or one in `allowed` is imported;
  other model names are left as they are (nothing runs).
  """
  saved = {k: (dict(v) if isinstance(v, dict) else v)
           for k, v in saved.items()}
  model, data = saved.setdefault('model', {}), saved.setdefault('data', {})
  # Before the families redesign the feature-cache switches sat in `model`.
  for key in ('use_feature_cache', 'feature_cache_dtype'):
    if key in model:
      data.setdefault(key, model.pop(key))
  name = model.get('name', '')
  if not (isinstance(name, str) and (name in REGISTRY or name in allowed)):
    return saved
  try:
    cls = family_class(name)
  except ValueError:
    return saved
  return cls.upgrade_config(saved)


def config_from_saved(saved: dict, source: str = 'a saved config',
                      allowed: Sequence[str] = ()
                      ) -> ml_collections.ConfigDict:
  """A config saved with a run, checkpoint or bundle (read from `source`)
  -> today's ConfigDict.

  Raises:
    ValueError: it names a family that is neither registered nor in
      `allowed` (`check_saved_name`): refused before any import.
  """
  model = saved.get('model') if isinstance(saved, dict) else None
  if not isinstance(model, dict):
    raise ValueError(f'{source} holds no model config')
  check_saved_name(model.get('name'), source, allowed)
  return saved_config.to_config(upgrade_config(saved, allowed))
