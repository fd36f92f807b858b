"""Orbax checkpoints: train state + Grain iterator + config, saved asynchronously.

Layout: <workdir>/checkpoints/<step>/{state,data,config}. `data` holds one
JSON file per process (Grain's handler); `config` is the run's full config.
"""

import json
import os
from typing import Any, Optional

from absl import logging
import grain
import ml_collections
import orbax.checkpoint as ocp

# Config sections that must match between a checkpoint and the run that
# resumes it: they decide the shapes and meaning of the saved arrays.
_MUST_MATCH = ('model',)
_MUST_MATCH_DATA = ('image_size', 'batch_size')
# Model keys that change how the step computes, not what the arrays mean.
_MAY_DIFFER = ('model.conv_impl', 'model.use_feature_cache',
               'model.feature_cache_dtype', 'model.resnet18_weights',
               'model.require_resnet18_weights')


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
  """Raises ValueError naming each key where `config` cannot resume `saved`."""
  now = config.to_dict()
  wanted = {}
  for section in _MUST_MATCH:
    wanted.update(flatten_dict({section: now[section]}))
  for key in _MAY_DIFFER:
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
  saved_config = manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
  check_compatible(saved_config, config, path)
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
