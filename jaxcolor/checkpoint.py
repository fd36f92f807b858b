"""Orbax checkpoints: train state + Grain iterator + config, saved asynchronously.

Layout: <workdir>/checkpoints/<step>/{state,data,config}. `data` holds one
JSON file per process (Grain's handler); `config` is the run's full config.
Which keys may differ on resume, and which state fields inference reads,
come from the model family.
"""

import json
import os
from typing import Any, Optional, Sequence

from absl import logging
from etils import epath
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxcolor import families
from jaxcolor import saved_config

# Config sections that must match between a checkpoint and the run that
# resumes it: they decide the shapes and meaning of the saved arrays.
_MUST_MATCH = ('model',)
_MUST_MATCH_DATA = ('image_size', 'batch_size')


def create_manager(workdir: str, config: ml_collections.ConfigDict
                   ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      enable_async_checkpointing=True,
      create=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Any, config: ml_collections.ConfigDict) -> None:
  """Starts an asynchronous save; returns once the arrays are off the device.

  The iterator state and config are captured before this returns, so the
  caller may go on stepping (and donating `state`'s buffers) at once.
  """
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
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
                     path: str) -> None:
  """Raises ValueError naming each key where `config` cannot resume `saved`.

  `saved` is upgraded to today's keys first; the model family's
  `resume_may_differ` keys are not compared.
  """
  saved = saved_config.upgrade(saved)
  now = config.to_dict()
  wanted = {}
  for section in _MUST_MATCH:
    wanted.update(flatten_dict({section: now[section]}))
  for key in families.family_class(config.model.name).resume_may_differ:
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


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: Any, config: ml_collections.ConfigDict
                   ) -> Optional[tuple[int, Any]]:
  """Restores the newest checkpoint into `abstract_state`'s shapes/shardings.

  `data_iterator` is restored in place. Returns (step, state), or None when
  the manager holds no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  path = os.path.join(str(manager.directory), str(step))
  saved = manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
  check_compatible(saved, config, path)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
  except (ValueError, KeyError) as e:
    raise ValueError(
        f'Checkpoint {path} does not match the train state this config '
        f'builds: {e}') from e
  logging.info('Restored checkpoint %s (step %d).', path, step)
  return step, restored['state']


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


def read_config(step_dir: str) -> ml_collections.ConfigDict:
  """A step folder's saved config, with today's keys."""
  return saved_config.from_dict(
      ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
          os.path.join(step_dir, 'config')))


def restore_fields(step_dir: str, fields: Sequence[str]) -> dict[str, Any]:
  """Only the named top-level fields of a step's state, as numpy arrays.

  A field saved as None (or empty) comes back as None.

  Raises:
    ValueError: the state has no such field (written by other code).
  """
  state_dir = os.path.abspath(os.path.join(step_dir, 'state'))
  meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
  missing = [k for k in fields if k not in meta]
  if missing:
    raise ValueError(f'{step_dir}: checkpoint has no {missing}; it was '
                     'written by other code')
  item = {k: meta[k] for k in fields if meta[k]}
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
      state_dir, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
  return {k: restored.get(k) for k in fields}

