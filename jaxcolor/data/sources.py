"""Where examples come from: an image folder, or prepared ArrayRecord shards.

`resolve(config.data)` finds each split once (one walk of the folder, one
read of the records' metadata) and returns a `Split` per split name: its
kind, its random-access source and how one element becomes an example. A new
kind of source is one new `Split` subclass here and a branch in `resolve`.

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
(`jaxcolor.data.feature_cache`). Dtypes are numpy dtype strings ('|u1', '<f2'),
except bfloat16, stored as the name 'bfloat16' (numpy has no string for it).
"""

import bisect
import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Optional, Sequence

from absl import logging
import ml_dtypes
import msgpack
import numpy as np

from jaxcolor.runtime import files

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
  path is `exclude` (e.g. an output folder inside the input folder). Names
  only: nothing is opened. FIFOs, sockets and devices with an image name
  are listed, so that readers skip them with a reason (never opening them,
  see `preprocess.read_file`) and count them.

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
  try:
    meta = json.loads(files.read_regular(path, 64 * 2**20, 'the limit'))
  except ValueError as e:  # not JSON, or not a regular file
    raise ValueError(f'{path} is damaged ({e}); re-run --mode=prepare') from e
  if not isinstance(meta, dict) or meta.get('format') != FORMAT_NAME:
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
  missing = [p for p in paths if not os.path.lexists(p)]
  if missing:
    raise FileNotFoundError(f'prepared shard(s) missing: {missing[:3]}; '
                            're-run --mode=prepare')
  for path in paths:  # a FIFO would block the reader forever
    reason = files.not_regular_reason(path)
    if reason:
      raise ValueError(f'prepared shard {path}: {reason}; re-run '
                       '--mode=prepare')
  return paths


@dataclasses.dataclass(frozen=True)
class RecordRef:
  """One record of a prepared shard, as read: its bytes, or why not.

  Attributes:
    shard: the shard's path.
    index: the record's position in the shard (from 0).
    data: the record's bytes; None when they could not be read.
    error: why not (e.g. Riegeli's 'Corrupted ... chunk hash mismatch').
  """
  shard: str
  index: int
  data: Optional[bytes] = None
  error: str = ''

  def __str__(self) -> str:
    return f'record {self.index} of {self.shard}'


def _short(e: BaseException, limit: int = 120) -> str:
  """An error's message on one line, without a long tail of details."""
  text = ' '.join(str(e).split()) or type(e).__name__
  if len(text) > limit:
    cut = text.find(' (')
    text = text[:cut] if 20 <= cut <= limit else text[:limit - 3] + '...'
  return text


class RecordSource:
  """Random access to the records of ArrayRecord shards, damage included.

  `source[i]` is a `RecordRef` that names the shard and the position of
  record `i`; a record whose chunk is damaged comes back with its `error`
  instead of raising, so readers skip it like a broken photo. A shard whose
  index cannot be read at all is left out with a warning (its records are
  then not in the source).
  """

  def __init__(self, paths: Sequence[str]):
    # pylint: disable=g-import-not-at-top
    from array_record.python import array_record_module
    import grain
    # pylint: enable=g-import-not-at-top
    shards, counts = [], []
    for path in paths:
      try:
        reader = array_record_module.ArrayRecordReader(path)
        try:
          n = reader.num_records()
        finally:
          reader.close()
      except (RuntimeError, OSError, ValueError) as e:
        logging.warning('Skipping the prepared shard %s: damaged, its record '
                        'index cannot be read (%s); re-run --mode=prepare to '
                        'recover its records', path, _short(e))
        continue
      if n:
        shards.append(path)
        counts.append(n)
    self.shards = tuple(shards)
    self._ends = []
    for n in counts:
      self._ends.append((self._ends[-1] if self._ends else 0) + n)
    # Shard 'path[start:end]': grain takes the counts read above instead of
    # opening every shard again.
    self._source = (grain.sources.ArrayRecordDataSource(
        [f'{p}[0:{n}]' for p, n in zip(shards, counts)]) if shards else None)

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def locate(self, i: int) -> tuple[str, int]:
    """(shard path, position in it) of record `i`."""
    if not 0 <= i < len(self):
      raise IndexError(f'record {i} of {len(self)}')
    k = bisect.bisect_right(self._ends, i)
    return self.shards[k], i - (self._ends[k - 1] if k else 0)

  def __getitem__(self, i: int) -> RecordRef:
    i = int(i)
    shard, index = self.locate(i)
    try:
      return RecordRef(shard, index, data=self._source[i])
    except Exception as e:  # pylint: disable=broad-except
      # Riegeli raises RuntimeError for a corrupt chunk; any failure of one
      # record must only skip that record.
      return RecordRef(shard, index, error=_short(e))

  def __repr__(self) -> str:
    return f'RecordSource({len(self.shards)} shards, {len(self)} records)'


def record_source(paths: Sequence[str]) -> RecordSource:
  """Random-access source of `RecordRef`s over ArrayRecord shards."""
  return RecordSource(paths)


# ---------------------------------------------------------------- splits
@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a resolved source.

  Attributes:
    kind: 'folder' or 'records'.
    name: 'train' or 'val'.
    num_examples: files or records, counted before unusable files are
      skipped.
  """
  kind: str
  name: str
  num_examples: int

  @property
  def source(self) -> Any:
    """Random-access elements (a sequence, or a Grain data source)."""
    raise NotImplementedError

  def load(self, element: Any, opts: Any,
           rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    """element -> example dict of uint8 maps (see preprocess.py); raises
    `preprocess.BadImageError` (or any error) for an unusable one."""
    raise NotImplementedError

  def describe(self, element: Any) -> str:
    """How a skipped element is named in a warning."""
    del element
    return f'<{self.kind} element>'


@dataclasses.dataclass(frozen=True)
class FolderSplit(Split):
  """Photo files, decoded and preprocessed on the fly."""
  paths: tuple[str, ...] = ()

  @property
  def source(self) -> Sequence[str]:
    return self.paths

  def load(self, element, opts, rng=None):
    from jaxcolor.data import preprocess  # pylint: disable=g-import-not-at-top
    return preprocess.load_example(element, opts, rng)

  def describe(self, element):
    return element


@dataclasses.dataclass(frozen=True)
class RecordSplit(Split):
  """Prepared ArrayRecord shards (centre crops; flips applied on reading).

  Elements are `RecordRef`s. A record that cannot be read or decoded, or
  whose arrays differ from `arrays` (metadata.json's dtypes and shapes), is
  refused with `preprocess.BadImageError`, so it is skipped and counted like
  a broken photo. `keep` names optional record arrays (the feature cache's)
  to keep; other optional arrays are dropped, so records with features
  serve any config.
  """
  shards: tuple[str, ...] = ()
  keep: tuple[str, ...] = ()
  optional: tuple[str, ...] = ()
  arrays: tuple[tuple[str, str, tuple[int, ...]], ...] = ()

  @functools.cached_property
  def source(self) -> Any:
    return record_source(self.shards) if self.shards else []

  def load(self, element, opts, rng=None):
    from jaxcolor.data import preprocess  # pylint: disable=g-import-not-at-top
    if element.data is None:
      raise preprocess.BadImageError(f'damaged record ({element.error})')
    try:
      example = decode_record(element.data)
    except Exception as e:  # pylint: disable=broad-except
      raise preprocess.BadImageError(f'damaged record ({_short(e)})') from e
    wrong = array_mismatch(example, self.arrays)
    if wrong:
      raise preprocess.BadImageError(
          f'record does not match {METADATA_FILE} ({wrong})')
    for key in self.optional:
      if key not in self.keep:
        example.pop(key, None)
    if opts.random_flip and rng is not None and rng.random() < 0.5:
      example = preprocess.flip(example)
    return example

  def describe(self, element):
    return str(element)


def array_specs(meta: dict[str, Any]
                ) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
  """metadata.json's 'arrays' as ((key, dtype name, shape), ...)."""
  arrays = meta.get('arrays')
  if arrays is None:  # the maps every record holds
    s = int(meta['image_size'])
    arrays = {'rgb': ['uint8', [s, s, 3]], 'gray': ['uint8', [s, s, 1]],
              'edge': ['uint8', [s, s, 1]], 'saliency': ['uint8', [s, s, 1]]}
  return tuple((key, str(dtype), tuple(int(n) for n in shape))
               for key, (dtype, shape) in sorted(arrays.items()))


def array_mismatch(example: dict[str, np.ndarray],
                   specs: Sequence[tuple[str, str, tuple[int, ...]]]) -> str:
  """How a decoded record differs from `array_specs`; '' if it does not."""
  if not specs:
    return ''
  problems = []
  for key, dtype, shape in specs:
    value = example.get(key)
    if value is None:
      problems.append(f'{key!r} is missing')
    elif value.dtype != decode_dtype(dtype) or value.shape != shape:
      problems.append(f'{key!r} is {value.dtype.name} '
                      f'{tuple(value.shape)}, expected {dtype} {shape}')
  extra = sorted(set(example) - {key for key, _, _ in specs})
  if extra:
    problems.append(f'unexpected array(s) {", ".join(map(repr, extra))}')
  return '; '.join(problems)


@dataclasses.dataclass(frozen=True)
class Resolved:
  """Every split of the configured data, found once.

  Attributes:
    splits: split name -> Split.
    metadata: the prepared records' metadata.json (checked against the
      config), or None for a folder.
  """
  splits: dict[str, Split]
  metadata: Optional[dict[str, Any]] = None


def resolve(data_config: Any, keep: Sequence[str] = (),
            optional: Sequence[str] = ()) -> Resolved:
  """config.data -> its splits: prepared records if prepared_dir is set,
  else the image folder(s). `keep`/`optional`: record arrays beyond the
  maps that readers keep / may find (see RecordSplit).

  Raises:
    FileNotFoundError, ValueError: a missing folder or metadata file, no
      images, records written with other settings, a bad val_fraction.
  """
  prepared = data_config.prepared_dir
  if prepared:
    meta = read_metadata(prepared)
    check_metadata(meta, data_config, prepared)
    splits = {
        s: RecordSplit(kind='records', name=s,
                       num_examples=int(meta['splits'][s]['num_examples']),
                       shards=tuple(shard_paths(prepared, meta, s)),
                       keep=tuple(keep), optional=tuple(optional),
                       arrays=array_specs(meta))
        for s in SPLITS}
    return Resolved(splits=splits, metadata=meta)
  listed = split_files(data_config)
  return Resolved(splits={
      s: FolderSplit(kind='folder', name=s, num_examples=len(listed[s]),
                     paths=tuple(listed[s])) for s in SPLITS})
