"""Configs saved with a run, a checkpoint or a bundle, read back.

Saved configs are JSON (lists for tuples). Bringing an old one up to
today's keys is the model family's business
(`jaxcolor.families.config_from_saved`); this module only reads and
converts.
"""

import json
import os
from typing import Any, Optional

import ml_collections

from jaxcolor.runtime import files

RUN_CONFIG_FILE = 'config.json'  # written by training in the workdir


def to_config(saved: dict) -> ml_collections.ConfigDict:
  """A saved (JSON) config -> ConfigDict; lists become tuples."""
  def fix(v: Any) -> Any:
    if isinstance(v, dict):
      return {k: fix(x) for k, x in v.items()}
    if isinstance(v, list):
      return tuple(fix(x) for x in v)
    return v
  return ml_collections.ConfigDict(fix(saved))


def read_run_config(workdir: str) -> Optional[dict]:
  """<workdir>/config.json as saved, or None when there is none.

  Raises:
    ValueError: the file is not a JSON object.
  """
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  try:
    saved = json.loads(files.read_regular(path, files.JSON_LIMIT,
                                          'the limit of a saved config'))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} is not readable JSON ({e}); delete it, or '
                     'run the training again to rewrite it') from e
  if not isinstance(saved, dict):
    raise ValueError(f'{path} does not hold a config (a JSON object)')
  return saved
