"""Orbax checkpoints: train state + Grain iterator + config, saved asynchronously.

Layout: <workdir>/checkpoints/<step>/{state,data,config}. `data` holds one
JSON file per process (Grain's handler); `config` is the run's full config.
Which keys may differ on resume, and which state fields inference reads,
come from the model family.
"""

import contextlib
import dataclasses
import json
import logging as py_logging
import os
import shutil
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import logging
from etils import epath
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxcolor.runtime import files


# Config sections that must match between a checkpoint and the run that
# resumes it: they decide the shapes and meaning of the saved arrays.
_MUST_MATCH = ('model',)
_MUST_MATCH_DATA = ('image_size', 'batch_size')


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's pytree handler for the train state, writing each replicated
  array from one replica.

  Orbax's default on CPU and TPU first slices every replicated array across
  its replicas, one small compiled program per array, shape and device: for
  the tiny test model's 254 arrays on 4 CPU devices, 988 compiles and a
  first save blocking for 19 s (0.4 s without). The state is small next to
  device-to-host bandwidth, so one replica writes it whole (orbax's default
  on GPUs).
  """
  th = ocp.type_handlers
  arrays = th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (str, th.StringHandler()),
      (jax.Array, th.ArrayHandler(use_replica_parallel=False)))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=arrays)


def create_manager(workdir: str, config: ml_collections.ConfigDict
                   ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True)
  handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
  state = _state_handler()
  handlers.add('state', ocp.args.PyTreeSave, state)
  handlers.add('state', ocp.args.PyTreeRestore, state)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')), options=options,
      handler_registry=handlers)


def _restore_args(target: Any) -> ocp.args.PyTreeRestore:
  """Restores into `target`'s shapes, dtypes and shardings."""
  return ocp.args.PyTreeRestore(
      item=target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(target))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Any, config: ml_collections.ConfigDict) -> None:
  """Starts an asynchronous save; returns once the arrays are off the device.

  The iterator state and config are captured before this returns, so the
  caller may go on stepping (and donating `state`'s buffers) at once.
  """
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config.to_dict())), force=True)


def flatten_dict(d: dict, prefix: str = '') -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}; tuples become lists (as in JSON)."""
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(flatten_dict(v, key + '.'))
    else:
      out[key] = list(v) if isinstance(v, (list, tuple)) else v
  return out


def check_compatible(saved: dict, config: ml_collections.ConfigDict,
                     path: str, may_differ: Sequence[str] = ()) -> None:
  """Raises ValueError naming each key where `config` cannot resume `saved`.

  `saved` has today's keys (`families.upgrade_config`); the `may_differ`
  keys (the family's `resume_may_differ`) are not compared.
  """
  now = config.to_dict()
  wanted = {}
  for section in _MUST_MATCH:
    wanted.update(flatten_dict({section: now[section]}))
  for key in may_differ:
    wanted.pop(key, None)
  for key in _MUST_MATCH_DATA:
    wanted[f'data.{key}'] = now['data'][key]
  have = flatten_dict(saved)
  diffs = [f'  {k}: checkpoint has {have.get(k)!r}, config has {v!r}'
           for k, v in sorted(wanted.items())
           if k in have and json.dumps(have[k]) != json.dumps(v)]
  if diffs:
    raise ValueError(
        f'The checkpoint in {path} was written with a different model/data '
        'configuration and cannot be resumed with this config:\n' +
        '\n'.join(diffs) + '\nUse a new --workdir, or the original config.')


class DamagedCheckpointError(ValueError):
  """A step folder that cannot be read: a file missing, truncated or garbled."""


DAMAGED_DIR = 'checkpoints_damaged'  # beside checkpoints/: set-aside steps
# Files every finished step folder has (relative to it).
_REQUIRED = ('state/_METADATA', 'config/metadata', 'data')


def check_files(step_dir: str) -> None:
  """Raises DamagedCheckpointError naming the first required file missing."""
  for rel in _REQUIRED:
    if not os.path.exists(os.path.join(step_dir, rel)):
      raise DamagedCheckpointError(f'{os.path.join(step_dir, rel)} is missing')


def _first_line(e: BaseException) -> str:
  """The first line of the error's root cause (Orbax wraps TensorStore's
  'byte range not valid' in a message that names only an array index)."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e).strip().splitlines()
  text = text[0].split(' See full TensorStore details')[0] if text else ''
  return f'{type(e).__name__}: {text}'[:300]


def root_cause(e: BaseException) -> str:
  """What failed, in a few words: 'No space left on device' for an OS
  error however deeply Orbax and TensorStore wrapped it, else the first
  line of the root cause."""
  return files.disk_fault(e) or _first_line(e)


def read_saved_config(step_dir: str) -> dict:
  """A step folder's saved config as a dict; DamagedCheckpointError if the
  file is missing or not JSON."""
  check_files(step_dir)
  path = os.path.join(step_dir, 'config', 'metadata')
  try:
    saved = json.loads(files.read_regular(path, files.JSON_LIMIT,
                                          'the limit of a saved config'))
  except (OSError, ValueError) as e:
    raise DamagedCheckpointError(f'{path} is not readable JSON '
                                 f'({_first_line(e)})') from e
  if not isinstance(saved, dict):
    raise DamagedCheckpointError(f'{path} does not hold a config')
  return saved


def _state_tree(step_dir: str) -> Any:
  state_dir = epath.Path(os.path.abspath(os.path.join(step_dir, 'state')))
  try:
    return ocp.PyTreeCheckpointHandler().metadata(state_dir).tree
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(
        f'{state_dir}/_METADATA is not readable ({_first_line(e)})') from e


def _flat_shapes(tree: Any) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: x is None)
  return {jax.tree_util.keystr(p, simple=True, separator='/'):
          tuple(getattr(x, 'shape', ()) or ()) for p, x in leaves
          if x is not None}


def check_structure(step_dir: str, abstract_state: Any) -> Any:
  """Raises ValueError naming the arrays where the saved state differs from
  the one this config builds (another model or code, not damage); returns
  the saved tree's metadata, as read."""
  saved = _state_tree(step_dir)
  want = _flat_shapes(abstract_state)
  have = _flat_shapes(saved)
  diffs = [f'  {k}: missing' for k in sorted(set(want) - set(have))]
  diffs += [f'  {k}: not in this model' for k in sorted(set(have) - set(want))]
  diffs += [f'  {k}: saved {have[k]}, model {want[k]}'
            for k in sorted(set(want) & set(have)) if have[k] != want[k]]
  if diffs:
    shown = diffs[:12] + ([f'  ... and {len(diffs) - 12} more']
                          if len(diffs) > 12 else [])
    raise ValueError(f'Checkpoint {step_dir} does not match the train state '
                     'this config builds:\n' + '\n'.join(shown) +
                     '\nUse a new --workdir, or the code and config that '
                     'wrote it.')
  return saved


# A damaged checkpoint fails Orbax's read of every array it touches: Orbax
# raises the first failure and leaves the other reads running on an event
# loop it has already closed. Each of those then reports itself, with a
# traceback, when it finishes or is garbage-collected, possibly steps later:
# through asyncio's logger ('Task/Future exception was never retrieved') and
# sys.unraisablehook (the read's own exception; 'Event loop is closed' from
# TensorStore's callback). `restore` has already named the damage in one
# line, so these reports are dropped; every other one passes. They outlive
# the restore call that started them, so the drop cannot be undone when it
# returns: it is installed only once a read has failed, and a process that
# never meets a damaged checkpoint keeps Python's hooks untouched.
def _is_failed_read(text: str) -> bool:
  return ('Encountered error while reading array index' in text or
          ' in OCDBT database at ' in text)


class _OrphanedReadLogs(py_logging.Filter):
  """Drops asyncio's 'exception was never retrieved' for Orbax's reads."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    message = str(record.msg)
    return not ('never retrieved' in message and _is_failed_read(message))


class _OrphanedReadHook:
  """A sys.unraisablehook that drops the orphaned reads' reports."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable):
    error = unraisable.exc_value
    if _is_failed_read(str(error)) or (
        isinstance(error, RuntimeError) and unraisable.object is None and
        str(error) == 'Event loop is closed'):
      return
    self.previous(unraisable)


def drop_orphaned_reports() -> None:
  """Installs the filter and the hook above, once per process, after a
  failed read or save."""
  reads = py_logging.getLogger('asyncio')
  if not any(isinstance(f, _OrphanedReadLogs) for f in reads.filters):
    reads.addFilter(_OrphanedReadLogs())
  if not isinstance(sys.unraisablehook, _OrphanedReadHook):
    sys.unraisablehook = _OrphanedReadHook(sys.unraisablehook)


@contextlib.contextmanager
def failed_writes_quiet() -> Iterator[None]:
  """Around a training loop's saves: a save that fails on a full disk
  leaves TensorStore callbacks on Orbax's closed event loop, each reporting
  'Event loop is closed' with a traceback, possibly before the failure is
  seen. The loop reports the failure itself, so those are dropped
  (`_OrphanedReadHook`) within the block, and after it once a failure was
  seen (`drop_orphaned_reports`): the callbacks outlive the block."""
  previous = sys.unraisablehook
  if not isinstance(previous, _OrphanedReadHook):
    sys.unraisablehook = _OrphanedReadHook(previous)
  try:
    yield
  finally:
    failed = any(isinstance(f, _OrphanedReadLogs)
                 for f in py_logging.getLogger('asyncio').filters)
    if not failed:
      sys.unraisablehook = previous


class _Quiet:
  """Silences library logging while a damaged checkpoint may be read (its
  reader logs a traceback per array before raising once)."""

  def __enter__(self):
    self._logger = py_logging.getLogger('absl')
    self._level = self._logger.level
    self._logger.setLevel(py_logging.CRITICAL)

  def __exit__(self, *exc):
    self._logger.setLevel(self._level)


def set_aside(step_dir: str) -> str:
  """Moves a damaged step folder to <workdir>/checkpoints_damaged/; its new
  path (kept for inspection, never deleted)."""
  ckpts = os.path.dirname(os.path.abspath(step_dir))
  out_dir = os.path.join(os.path.dirname(ckpts), DAMAGED_DIR)
  os.makedirs(out_dir, exist_ok=True)
  name = os.path.basename(step_dir)
  dest, i = os.path.join(out_dir, name), 1
  while os.path.exists(dest):
    dest, i = os.path.join(out_dir, f'{name}.{i}'), i + 1
  os.replace(step_dir, dest)
  return dest


def clean_interrupted(workdir: str) -> list[str]:
  """Removes the temporary folders of saves that never finished
  ('<step>.orbax-checkpoint-tmp*'); returns what was removed."""
  ckpts = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckpts):
    return []
  removed = []
  for name in sorted(os.listdir(ckpts)):
    if '.orbax-checkpoint-tmp' in name:
      shutil.rmtree(os.path.join(ckpts, name), ignore_errors=True)
      removed.append(name)
  if removed:
    logging.warning('Removed %d interrupted checkpoint save(s) in %s: %s',
                    len(removed), ckpts, ', '.join(removed))
  return removed


def _restore_state(manager: ocp.CheckpointManager, step: int, saved: Any,
                   abstract_state: Any) -> Any:
  """The state of `step`, whose saved tree's metadata is `saved`.
  Top-level fields that are None in this state and absent from the saved
  tree (fields added since, whose switch is off, e.g. a GAN run's EMA) are
  restored as None."""
  absent = []
  if dataclasses.is_dataclass(abstract_state) and isinstance(saved, dict):
    absent = [f.name for f in dataclasses.fields(abstract_state)
              if getattr(abstract_state, f.name) is None and
              f.name not in saved]
  if not absent:
    return manager.restore(step, args=ocp.args.Composite(
        state=_restore_args(abstract_state)))['state']
  target = {f.name: getattr(abstract_state, f.name)
            for f in dataclasses.fields(abstract_state)
            if f.name not in absent}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=_restore_args(target)))['state']
  return abstract_state.replace(**restored)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: Any, config: ml_collections.ConfigDict,
                   writer: bool = True,
                   upgrade: Callable[[dict], dict] = lambda saved: saved,
                   may_differ: Sequence[str] = ()
                   ) -> Optional[tuple[int, Any]]:
  """Restores the newest intact checkpoint into `abstract_state`'s
  shapes/shardings; `data_iterator` is restored in place.

  Each checkpoint's saved config, brought to today's keys by `upgrade`,
  must match `config` but for the `may_differ` keys (`check_compatible`).

  A damaged step (a file missing, truncated or garbled) is named, set aside
  in <workdir>/checkpoints_damaged/ (by the `writer` process) and the next
  older one is tried, with a warning. Returns (step, state), or None when
  the workdir holds no checkpoint.

  Raises:
    ValueError: a checkpoint of another model/config (not damage: nothing
      is set aside), or every checkpoint is damaged.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    path = os.path.join(str(manager.directory), str(step))
    try:
      check_compatible(upgrade(read_saved_config(path)), config, path,
                       may_differ)
      saved = check_structure(path, abstract_state)
      with _Quiet():
        try:
          state = _restore_state(manager, step, saved, abstract_state)
          manager.restore(step, args=ocp.args.Composite(
              data=grain.checkpoint.CheckpointRestore(data_iterator)))
        except Exception as e:  # pylint: disable=broad-except
          drop_orphaned_reports()  # the failed read's leftovers
          raise DamagedCheckpointError(
              f'{path} could not be read ({_first_line(e)})') from e
    except DamagedCheckpointError as e:
      where = set_aside(path) if writer else path
      logging.warning('Checkpoint of step %d is damaged: %s; set aside as %s, '
                      'trying the one before.', step, e, where)
      damaged.append(f'step {step}: {e}')
      continue
    if damaged:
      manager.reload()
      logging.warning('Resuming from step %d, the newest intact checkpoint '
                      '(%d newer one(s) damaged).', step, len(damaged))
    logging.info('Restored checkpoint %s (step %d).', path, step)
    return step, state
  if damaged:
    raise ValueError(
        f'None of the {len(damaged)} checkpoint(s) in {manager.directory} is '
        f'intact ({"; ".join(damaged)}); they were set aside in '
        f'{DAMAGED_DIR}/. Use a new --workdir, or remove '
        f'{manager.directory} to start this one afresh.')
  return None


def check_resumable(workdir: str, abstract_state: Any,
                    config: ml_collections.ConfigDict,
                    upgrade: Callable[[dict], dict] = lambda saved: saved,
                    may_differ: Sequence[str] = ()) -> None:
  """`restore_latest`'s refusals, decided before the run writes anything:
  the newest checkpoint whose config is readable must be one `config` can
  resume (`check_compatible`, `check_structure`). Damaged ones are passed
  over here; `restore_latest` sets them aside.

  Raises:
    ValueError: a checkpoint of another model/config.
  """
  for step_dir in reversed(step_dirs(workdir)):
    try:
      saved = upgrade(read_saved_config(step_dir))
      check_compatible(saved, config, step_dir, may_differ)
      check_structure(step_dir, abstract_state)
    except DamagedCheckpointError:
      continue
    return


# ------------------------------------------------------------------ reading
def step_dirs(workdir: str) -> list[str]:
  """Finished step folders under a workdir (or its checkpoints/ folder, or
  a step folder itself), oldest first. Unfinished saves live in
  '<step>.orbax-checkpoint-tmp-*' folders and are left out."""
  if os.path.isdir(os.path.join(workdir, 'state')) and os.path.isdir(
      os.path.join(workdir, 'config')):
    return [workdir]
  ckpts = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckpts):
    if os.path.basename(os.path.normpath(workdir)) != 'checkpoints':
      return []
    ckpts = workdir
  steps = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()
                 and os.path.isdir(os.path.join(ckpts, n, 'state')))
  return [os.path.join(ckpts, str(s)) for s in steps]


def restore_fields(step_dir: str, fields: Sequence[str],
                   missing_ok: bool = False) -> dict[str, Any]:
  """Only the named top-level fields of a step's state, as numpy arrays.

  A field saved as None (or empty) comes back as None; so does one the
  state lacks when `missing_ok` (e.g. a field added since it was written).

  Raises:
    ValueError: the state has no such field (written by other code), unless
      `missing_ok`.
  """
  check_files(step_dir)
  state_dir = os.path.abspath(os.path.join(step_dir, 'state'))
  meta = _state_tree(step_dir)
  missing = [k for k in fields if k not in meta]
  if missing and not missing_ok:
    raise ValueError(f'{step_dir}: checkpoint has no {missing}; it was '
                     'written by other code')
  item = {k: meta[k] for k in fields if k in meta and meta[k]}
  if not item:
    return {k: None for k in fields}
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with _Quiet():
    try:
      restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
          state_dir, args=ocp.args.PyTreeRestore(
              item=item, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      drop_orphaned_reports()  # the failed read's leftovers
      raise DamagedCheckpointError(
          f'{step_dir} could not be read ({_first_line(e)})') from e
  return {k: restored.get(k) for k in fields}

