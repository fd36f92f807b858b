"""Where examples come from: an image folder, or prepared ArrayRecord shards.

Image folder: every file under the folder (recursively, following no
directory links, skipping names that start with '.') whose extension is one
of `IMAGE_EXTENSIONS` (any case), sorted by relative path. Without
`config.data.val_dir`, a file belongs to the validation split when a stable
hash (MD5) of its relative path falls below `config.data.val_fraction`, so
the split does not change when files are added or the folder is moved.

Prepared shards (written by `jaxcolor.data.prepare`):
  <prepared_dir>/metadata.json
  <prepared_dir>/{train,val}-NNNNN-of-MMMMM.array_record
Each record is a msgpack map (format version `FORMAT_VERSION`):
  {'version': 1, 'name': <relative path of the photo>,
   'arrays': {key: [numpy dtype str, shape list, raw C-order bytes]}}
with keys 'rgb', 'gray', 'edge', 'saliency' (uint8, see preprocess.py),
and 'resnet_features' when prepared with the feature cache
(`jaxcolor.feature_cache`). Dtypes are numpy dtype strings ('|u1', '<f2'),
except bfloat16, stored as the name 'bfloat16' (numpy has no string for it).
"""

import hashlib
import json
import os
from typing import Any, Sequence

import ml_dtypes
import msgpack
import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
SPLITS = ('train', 'val')
FORMAT_NAME = 'jaxcolor-array-record'
FORMAT_VERSION = 1
METADATA_FILE = 'metadata.json'
# Settings baked into prepared records; training refuses a mismatch.
CHECKED_KEYS = ('image_size', 'canny_low', 'canny_high', 'saliency')


# ---------------------------------------------------------------- folders
def list_images(root: str, config_key: str = 'config.data.train_dir',
                exclude: str = '') -> list[str]:
  """Sorted relative POSIX paths of the image files under `root`.

  Hidden files and folders are left out, and so is the folder whose real
  path is `exclude` (e.g. an output folder inside the input folder).

  Raises:
    FileNotFoundError: `root` is not an existing folder.
    ValueError: it holds no image files.
  """
  if not root:
    raise ValueError(f'{config_key} is empty; set it to a folder of photos')
  if not os.path.isdir(root):
    raise FileNotFoundError(f'{config_key}={root!r} is not an existing folder')
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if not d.startswith('.') and
                   os.path.realpath(os.path.join(dirpath, d)) != exclude]
    for name in filenames:
      if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS):
        rel = os.path.relpath(os.path.join(dirpath, name), root)
        found.append(rel.replace(os.sep, '/'))
  if not found:
    raise ValueError(f'{config_key}={root!r} holds no image files '
                     f'({" ".join(IMAGE_EXTENSIONS)}, searched recursively)')
  return sorted(found)


def in_val_split(rel_path: str, val_fraction: float) -> bool:
  """Stable hash split: True for about `val_fraction` of all paths."""
  digest = hashlib.md5(rel_path.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64 < val_fraction


def split_files(data_config: Any) -> dict[str, list[str]]:
  """{'train': [path, ...], 'val': [path, ...]} (full paths, sorted)."""
  train_dir = data_config.train_dir
  rel = list_images(train_dir, 'config.data.train_dir')
  full = lambda root, names: [os.path.join(root, r) for r in names]
  if data_config.val_dir:
    val_rel = list_images(data_config.val_dir, 'config.data.val_dir')
    return {'train': full(train_dir, rel),
            'val': full(data_config.val_dir, val_rel)}
  frac = float(data_config.val_fraction)
  if not 0.0 <= frac < 1.0:
    raise ValueError(f'config.data.val_fraction={frac} must be in [0, 1)')
  val = [r for r in rel if in_val_split(r, frac)]
  val_set = set(val)
  train = [r for r in rel if r not in val_set]
  if not train:
    raise ValueError(f'config.data.val_fraction={frac} leaves no training '
                     f'images out of {len(rel)} in {train_dir!r}')
  return {'train': full(train_dir, train), 'val': full(train_dir, val)}


# ---------------------------------------------------------------- records
# Dtypes without a numpy dtype string, stored by name.
_NAMED_DTYPES = {'bfloat16': np.dtype(ml_dtypes.bfloat16)}


def _dtype_str(dtype: np.dtype) -> str:
  return dtype.name if dtype.name in _NAMED_DTYPES else dtype.str


def decode_dtype(text: str) -> np.dtype:
  """A record's dtype string (or a name such as 'bfloat16') -> numpy dtype."""
  return _NAMED_DTYPES.get(text) or np.dtype(text)


def encode_record(example: dict[str, np.ndarray], name: str = '') -> bytes:
  """Example dict of numpy arrays -> record bytes (format in module doc)."""
  arrays = {}
  for key, value in example.items():
    value = np.ascontiguousarray(value)
    arrays[key] = [_dtype_str(value.dtype), list(value.shape),
                   value.tobytes()]
  return msgpack.packb({'version': FORMAT_VERSION, 'name': name,
                        'arrays': arrays}, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, np.ndarray]:
  """Record bytes -> example dict (read-only numpy arrays)."""
  record = msgpack.unpackb(data, raw=False)
  if record.get('version') != FORMAT_VERSION:
    raise ValueError(f'record format version {record.get("version")!r}; this '
                     f'jaxcolor reads version {FORMAT_VERSION}. Re-run '
                     '--mode=prepare')
  return {key: np.frombuffer(raw, decode_dtype(dtype)).reshape(shape)
          for key, (dtype, shape, raw) in record['arrays'].items()}


def read_metadata(prepared_dir: str) -> dict[str, Any]:
  """The prepared folder's metadata.json; a clear error if it is missing."""
  path = os.path.join(prepared_dir, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'config.data.prepared_dir={prepared_dir!r} has no {METADATA_FILE}; '
        'write it with --mode=prepare (or unset prepared_dir to decode the '
        'image folder on the fly)')
  with open(path) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT_NAME:
    raise ValueError(f'{path} is not a jaxcolor prepared-records file')
  if meta.get('format_version') != FORMAT_VERSION:
    raise ValueError(
        f'{path}: format_version {meta.get("format_version")!r}, this jaxcolor '
        f'reads {FORMAT_VERSION}; re-run --mode=prepare')
  return meta


def check_metadata(meta: dict[str, Any], data_config: Any, path: str) -> None:
  """Raises ValueError naming each setting where records and config differ."""
  diffs = [f'config.data.{k}: records have {meta.get(k)!r}, config has '
           f'{getattr(data_config, k)!r}'
           for k in CHECKED_KEYS if meta.get(k) != getattr(data_config, k)]
  if diffs:
    raise ValueError(
        f'The prepared records in {path} were written with other settings:\n  '
        + '\n  '.join(diffs) + '\nRe-run --mode=prepare with this config, or '
        'use the settings above.')


def shard_paths(prepared_dir: str, meta: dict[str, Any], split: str
                ) -> list[str]:
  """Full paths of a split's shards, in order; checks that they exist."""
  names = meta['splits'][split]['shards']
  paths = [os.path.join(prepared_dir, n) for n in names]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f'prepared shard(s) missing: {missing[:3]}; '
                            're-run --mode=prepare')
  return paths


def record_source(paths: Sequence[str]):
  """Random-access source of record bytes over ArrayRecord shards."""
  import grain  # pylint: disable=g-import-not-at-top
  return grain.sources.ArrayRecordDataSource(list(paths))
