"""A trained colorizer as a function: gray at model size -> chroma.

`load(path)` reads a training workdir (its newest checkpoint) or an export
bundle (`--mode=export`, see `write_bundle`) and returns a `Predictor`.
Only the arrays inference needs are read: the state fields the model's
family names (`Family.inference_keys`: the generator + ResNet branch of the
GANs, the CIC network's params and BatchNorm statistics); no optimiser
state, critic or ResNet weights file. Both sources are checked against the
tree the family builds from the saved config (upgraded to today's keys), so
a checkpoint of another code version fails with the keys that differ.
`read_model(path, fields)` reads the saved config and arrays of any of
these (or of a `checkpoints/<step>` folder) without its family, for
fine-tuning (`jaxcolor.trainer.read_source`).

Export bundle (a folder):
  bundle.json     {"format": "jaxcolor-inference-bundle", "version": 1,
                   "model": config.model.name, "step": int,
                   "mean_chroma_cr_cb": [cr, cb] or null, "config": {...}}
  params.msgpack  flax.serialization msgpack of the parameter tree (numpy).
"""

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Optional, Sequence

from absl import logging
import flax
import jax
import ml_collections
import numpy as np

from jaxcolor import families
from jaxcolor.color import mean_chroma as mean_chroma_lib
from jaxcolor.color import recombine
from jaxcolor.runtime import checkpoint
from jaxcolor.runtime import files
from jaxcolor.runtime import saved_config

BUNDLE_FORMAT = 'jaxcolor-inference-bundle'
BUNDLE_VERSION = 1
BUNDLE_FILE = 'bundle.json'
PARAMS_FILE = 'params.msgpack'
DEFAULT_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A loaded model: `predictor(gray)` colorizes a batch at model size.

  Attributes:
    config: the run's config.
    mean_chroma: the training set's mean (Cr, Cb) in 8-bit units (see
      `jaxcolor.color.mean_chroma`), or None when unknown.
    params: the model's arrays (on the device).
    apply_fn: jitted (params, host inputs of b gray images) -> chroma
      float32 (b,S,S,2), for b = batch_size (`Family.predict`).
    family: the model's family (`jaxcolor.families`).
    batch_size: the compiled batch; other sizes are split and padded.
    step: the training step the parameters come from.
    source: the workdir or bundle they were loaded from.
  """
  config: ml_collections.ConfigDict
  mean_chroma: Optional[tuple[float, float]]
  params: Any = dataclasses.field(repr=False)
  apply_fn: Callable = dataclasses.field(repr=False)
  family: families.Family = dataclasses.field(repr=False)
  batch_size: int = DEFAULT_BATCH_SIZE
  step: int = 0
  source: str = ''

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def model_name(self) -> str:
    return self.config.model.name

  def __call__(self, gray: np.ndarray) -> np.ndarray:
    """gray uint8 (B, S, S, 1) -> chroma float32 (B, S, S, 2): (Cr - 128,
    Cb - 128) in 8-bit YCrCb units, not clipped to any gamut."""
    gray = np.asarray(gray)
    s = self.image_size
    if gray.dtype != np.uint8 or gray.ndim != 4 or gray.shape[1:] != (s, s, 1):
      raise ValueError(f'expected gray uint8 (B, {s}, {s}, 1); got '
                       f'{gray.dtype} {gray.shape}')
    inputs = self.family.host_inputs(gray)
    out = []
    b = self.batch_size
    for i in range(0, len(gray), b):
      part = {k: v[i:i + b] for k, v in inputs.items()}
      n = len(part['gray'])
      if n < b:  # a fixed batch shape: one compilation
        part = {k: np.pad(v, ((0, b - n),) + ((0, 0),) * (v.ndim - 1))
                for k, v in part.items()}
      out.append(np.asarray(self.apply_fn(self.params, part))[:n])
    if not out:
      return np.zeros((0, s, s, 2), np.float32)
    return np.concatenate(out).astype(np.float32)


# ------------------------------------------------------------------ models
def _flat(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(p, simple=True, separator='/'): v
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _check_params(params: Any, family: families.Family, path: str) -> Any:
  """Raises ValueError naming keys/shapes that differ from what code builds."""
  want = _flat(family.abstract_inference_params())
  have = _flat(params)
  diffs = [f'  {k}: missing' for k in sorted(set(want) - set(have))]
  diffs += [f'  {k}: not in the model' for k in sorted(set(have) - set(want))]
  diffs += [f'  {k}: saved {tuple(np.shape(have[k]))}, model '
            f'{tuple(want[k].shape)}' for k in sorted(set(want) & set(have))
            if tuple(np.shape(have[k])) != tuple(want[k].shape)]
  if diffs:
    shown = diffs[:12] + ([f'  ... and {len(diffs) - 12} more']
                          if len(diffs) > 12 else [])
    raise ValueError(
        f'{path}: the saved parameters do not match the '
        f'{family.name!r} model this code builds from the saved '
        'config:\n' + '\n'.join(shown))
  return params


@functools.lru_cache(maxsize=8)
def _family_and_apply(config_json: str) -> tuple[families.Family, Callable]:
  """The family of a config and its jitted `predict`; shared by equal
  configs, so a model loaded twice (e.g. a workdir and its bundle)
  compiles once."""
  # The config was checked when it was read (`families.config_from_saved`).
  family = families.build(saved_config.to_config(json.loads(config_json)))
  return family, jax.jit(family.predict)


def _model(config: ml_collections.ConfigDict
           ) -> tuple[families.Family, Callable]:
  """(family, jitted predict) of a config, built once per distinct config."""
  return _family_and_apply(json.dumps(config.to_dict(), sort_keys=True))


def _predictor(config, params, mean_chroma, step, source, batch_size):
  family, apply_fn = _model(config)
  params = jax.device_put(jax.tree.map(np.asarray, params))
  return Predictor(config=config, mean_chroma=mean_chroma, params=params,
                   apply_fn=apply_fn, family=family, batch_size=batch_size,
                   step=int(step), source=source)


# ------------------------------------------------------------------ workdirs
def _step_dirs(path: str, step: Optional[int]) -> Optional[list[str]]:
  """The finished step folders to try, newest first (only `step` if given);
  None when `path` is no training workdir."""
  if not (os.path.isdir(os.path.join(path, 'checkpoints')) or
          os.path.basename(os.path.normpath(path)) == 'checkpoints' or
          os.path.isdir(os.path.join(path, 'state'))):
    return None
  dirs = checkpoint.step_dirs(path)
  if not dirs:
    raise ValueError(f'{path} holds no finished checkpoint (is the run '
                     'still at its first steps?)')
  if step is None:
    return dirs[::-1]
  chosen = [d for d in dirs if os.path.basename(d) == str(step)]
  if not chosen:
    raise ValueError(f'{path} has no checkpoint of step {step}; it has '
                     + ', '.join(os.path.basename(d) for d in dirs))
  return chosen


def _restore_checkpoint(step_dir: str,
                        fields: Optional[Sequence[str]] = None,
                        allowed: Sequence[str] = ()
                        ) -> tuple[ml_collections.ConfigDict, Any, int]:
  """(config, arrays as numpy, step) of one checkpoint folder.

  The arrays: the inference params (`Family.from_saved`), or with `fields`
  those state fields as saved (None where saved as None or absent).

  Raises:
    checkpoint.DamagedCheckpointError: a file of it is missing or damaged.
    ValueError: its config names a family not registered nor `allowed`.
  """
  config = families.config_from_saved(
      checkpoint.read_saved_config(step_dir),
      os.path.join(step_dir, 'config', 'metadata'), allowed)
  step = int(os.path.basename(os.path.normpath(step_dir)))
  if fields is not None:
    return config, checkpoint.restore_fields(step_dir, fields,
                                             missing_ok=True), step
  family, _ = _model(config)
  params = family.from_saved(
      checkpoint.restore_fields(step_dir, family.inference_keys))
  return config, params, step


def _restore_newest_intact(path: str, dirs: list[str],
                           fields: Optional[Sequence[str]] = None,
                           allowed: Sequence[str] = ()):
  """`_restore_checkpoint` of the first intact folder of `dirs`; damaged
  ones are named in a warning and skipped (left where they are)."""
  damaged = []
  for step_dir in dirs:
    try:
      found = _restore_checkpoint(step_dir, fields, allowed)
    except checkpoint.DamagedCheckpointError as e:
      logging.warning('Skipping a damaged checkpoint: %s', e)
      damaged.append(str(e))
      continue
    if damaged:
      logging.warning('Using step %d, the newest intact checkpoint of %s.',
                      found[2], path)
    return step_dir, found
  raise ValueError(f'{path}: no intact checkpoint to load ('
                   + '; '.join(damaged) + ')')


def _workdir_chroma(workdir: str, config) -> Optional[tuple[float, float]]:
  """chroma.json of the run; for older runs computed from its data."""
  mean = mean_chroma_lib.read(workdir)
  if mean is not None:
    return mean
  try:
    mean, images = mean_chroma_lib.training_mean(config)
  except (ValueError, OSError) as e:
    logging.warning('%s has no %s and its training data is not readable '
                    '(%s): mean_chroma is unknown.', workdir,
                    mean_chroma_lib.FILE,
                    e)
    return None
  if mean is not None:
    try:
      mean_chroma_lib.write(workdir, mean, images)
    except OSError:
      pass  # a read-only workdir: computed again next time
  return mean


# ------------------------------------------------------------------ bundles
def is_bundle(path: str) -> bool:
  """True for a folder with a bundle.json (of any format)."""
  return os.path.isfile(os.path.join(path, BUNDLE_FILE))


def _is_our_bundle(path: str) -> bool:
  try:
    return json.loads(files.read_regular(
        os.path.join(path, BUNDLE_FILE), files.JSON_LIMIT)).get(
            'format') == BUNDLE_FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def check_bundle_target(out_dir: str) -> None:
  """Raises ValueError unless `out_dir` may take a bundle: new, empty, a
  bundle (replaced), or one whose export was cut off (params, no
  bundle.json). Hidden files (a lock, unfinished writes) do not count."""
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f'--output={out_dir!r} exists and is not a folder')
  if not os.path.isdir(out_dir) or _is_our_bundle(out_dir):
    return
  names = {n for n in os.listdir(out_dir) if not n.startswith('.')}
  if names - {PARAMS_FILE}:
    raise ValueError(f'--output={out_dir!r} is a non-empty folder that is not '
                     'an export bundle; choose a new or empty folder')


def _read_bundle(path: str) -> tuple[dict, Any]:
  """(bundle.json contents, params) of an export bundle folder."""
  try:
    meta = json.loads(files.read_regular(os.path.join(path, BUNDLE_FILE),
                                         files.JSON_LIMIT, 'the limit'))
  except ValueError as e:  # not JSON, not UTF-8, not a regular file
    raise ValueError(f'{path}/{BUNDLE_FILE} is not JSON ({e}); export the '
                     'bundle again with --mode=export') from e
  found = meta.get('format') if isinstance(meta, dict) else None
  if found != BUNDLE_FORMAT:
    raise ValueError(f'{path}/{BUNDLE_FILE} is not a jaxcolor inference '
                     f'bundle (format {found!r} if any; '
                     f'expected {BUNDLE_FORMAT!r})')
  if meta.get('version') != BUNDLE_VERSION:
    raise ValueError(f'{path}: bundle version {meta.get("version")!r}; this '
                     f'code reads version {BUNDLE_VERSION}')
  params_path = os.path.join(path, PARAMS_FILE)
  if not os.path.isfile(params_path):
    raise FileNotFoundError(f'{path}: bundle has no {PARAMS_FILE}')
  try:
    data = files.read_regular(params_path)
  except ValueError as e:
    raise ValueError(f'{params_path}: {e}') from e
  try:
    params = flax.serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except
    # msgpack raises its own errors (e.g. ExtraData, "incomplete input").
    raise ValueError(f'{params_path} is damaged ({type(e).__name__}: {e}); '
                     'export the bundle again with --mode=export') from e
  if not isinstance(params, dict):
    raise ValueError(f'{params_path} holds no parameter tree; export the '
                     'bundle again with --mode=export')
  return meta, params


def write_bundle(predictor: Predictor, out_dir: str) -> str:
  """Writes `predictor`'s params, config and chroma as a bundle; its path.

  Refuses a non-empty `out_dir` that is not a bundle; replaces a bundle.
  bundle.json is written last (and removed first when a bundle is
  replaced), so a folder holding it is a whole bundle of one export.
  """
  check_bundle_target(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  params = predictor.family.to_bundle(
      jax.tree.map(np.asarray, predictor.params))
  meta = {
      'format': BUNDLE_FORMAT, 'version': BUNDLE_VERSION,
      'model': predictor.model_name, 'step': predictor.step,
      'mean_chroma_cr_cb': (list(predictor.mean_chroma)
                            if predictor.mean_chroma else None),
      'config': predictor.config.to_dict(),
  }
  data = flax.serialization.msgpack_serialize(params)
  if os.path.lexists(os.path.join(out_dir, BUNDLE_FILE)):
    os.remove(os.path.join(out_dir, BUNDLE_FILE))
  files.write_bytes(os.path.join(out_dir, PARAMS_FILE), data)
  files.write_json(os.path.join(out_dir, BUNDLE_FILE), meta, indent=1)
  return out_dir


# ------------------------------------------------------------------ loading
def check_model_folder(path: str,
                       expected: str = 'a training workdir or an export '
                       'bundle') -> None:
  """That `path` (--workdir) names an existing folder.

  Raises:
    FileNotFoundError: it does not exist.
    ValueError: it is empty or a file; the message names `expected`.
  """
  if not path:
    raise ValueError(f'no model given: pass --workdir=RUN ({expected})')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path!r} does not exist (expected {expected})')
  if not os.path.isdir(path):
    raise ValueError(f'{path!r} is a file; expected {expected}')


MODEL_PATHS = ('an export bundle, a training workdir or one of its '
               'checkpoints/<step> folders')


def read_model(path: str, fields: Sequence[str],
               allowed_families: Sequence[str] = ()
               ) -> tuple[ml_collections.ConfigDict, dict, int, str]:
  """The saved config and arrays of a model to start from.

  `path` is an export bundle, a training workdir (its newest intact
  checkpoint; damaged ones are skipped with a warning) or a step folder.
  Reads no family code, so a model of any family can be read and judged;
  its saved config may name only a registered family or one of
  `allowed_families` (`families.config_from_saved`).

  Returns:
    (config with today's keys, tree, step, the bundle or step folder read):
    a bundle's tree as stored (`Family.to_bundle`); a checkpoint's state
    fields `fields` as numpy, None where saved as None or absent.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: it is no model, or a damaged one.
  """
  check_model_folder(path, MODEL_PATHS)
  if is_bundle(path):
    meta, tree = _read_bundle(path)
    return (_bundle_config(path, meta, allowed_families), tree,
            int(meta.get('step') or 0), path)
  dirs = _step_dirs(path, None)
  if dirs is None:
    raise ValueError(f'{path!r} is none of {MODEL_PATHS} (no checkpoints/, '
                     f'no {BUNDLE_FILE})')
  step_dir, (config, tree, step) = _restore_newest_intact(
      path, dirs, fields, allowed_families)
  return config, tree, step, step_dir


def _bundle_config(path: str, meta: dict, allowed: Sequence[str] = ()
                   ) -> ml_collections.ConfigDict:
  if not isinstance(meta.get('config'), dict):
    raise ValueError(f'{path}/{BUNDLE_FILE} holds no config; export the '
                     'bundle again with --mode=export')
  return families.config_from_saved(
      meta['config'], os.path.join(path, BUNDLE_FILE), allowed)


def load(path: str, batch_size: int = DEFAULT_BATCH_SIZE,
         step: Optional[int] = None, allowed_families: Sequence[str] = ()
         ) -> Predictor:
  """A training workdir (its newest intact checkpoint, or that of `step`) or
  a bundle -> Predictor. Its saved config may name only a registered family
  or one of `allowed_families` (import paths the user passed).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: it is neither a workdir with a finished checkpoint nor a
      bundle, a bundle of another format, or its arrays do not match the
      model the code builds from its config.
  """
  check_model_folder(path)
  if is_bundle(path):
    meta, params = _read_bundle(path)
    config = _bundle_config(path, meta, allowed_families)
    params = _model(config)[0].from_saved(params)
    mean = meta.get('mean_chroma_cr_cb')
    mean = tuple(float(v) for v in mean) if mean else None
    if step is not None and step != meta.get('step'):
      raise ValueError(f'{path} is a bundle of step {meta.get("step")}, not '
                       f'{step}')
    step = meta.get('step', 0)
  else:
    dirs = _step_dirs(path, step)
    if dirs is None:
      cut_off = (f' (it holds {PARAMS_FILE} alone: an export that was cut '
                 'off; run --mode=export again)'
                 if os.path.exists(os.path.join(path, PARAMS_FILE)) else '')
      raise ValueError(f'{path!r} is neither a training workdir (no '
                       f'checkpoints/) nor an export bundle (no '
                       f'{BUNDLE_FILE}){cut_off}')
    step_dir, (config, params, step) = _restore_newest_intact(
        path, dirs, allowed=allowed_families)
    workdir = os.path.dirname(os.path.dirname(os.path.abspath(step_dir)))
    mean = _workdir_chroma(workdir, config)
  _check_params(params, _model(config)[0], path)
  if mean is None:
    logging.warning('%s: the mean training chroma is unknown (no %s).', path,
                    mean_chroma_lib.FILE)
  return _predictor(config, params, mean, step, path, batch_size)


# ------------------------------------------------------------------ photos
def read_photo(path: str, max_pixels: int,
               max_bytes: Optional[int] = None) -> np.ndarray:
  """A photo file -> RGB uint8 (H, W, 3) (`preprocess.decode_image`);
  BadImageError (a ValueError) for an unusable file: not a regular file,
  over `max_bytes`, over `max_pixels` or not decodable."""
  from jaxcolor.data import preprocess  # pylint: disable=g-import-not-at-top
  data = preprocess.read_file(path, max_bytes=max_bytes)
  return preprocess.decode_image(data, max_pixels=max_pixels)


def colorize_photos(predictor: Predictor, images: list[np.ndarray],
                    upsampling: str = recombine.DEFAULT_UPSAMPLING
                    ) -> list[np.ndarray]:
  """Decoded photos (any size; gray, RGB or RGBA uint8) -> RGB uint8 of the
  same sizes (`recombine.colorize_photos` with this model)."""
  return recombine.colorize_photos(predictor, predictor.image_size, images,
                                   predictor.batch_size, upsampling)
