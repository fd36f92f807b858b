"""`--mode=export`: a trained model -> a small inference bundle.

The bundle (`jaxcolor.inference`: bundle.json + params.msgpack) holds only
what colorizing needs: the inference params, the config and the training
set's mean chroma; no optimiser state or critic. One export at a time
writes a bundle folder (a lock); each file appears whole or not at all.
"""

from typing import Optional, Sequence

from absl import logging

from jaxcolor import inference
from jaxcolor.runtime import folder_lock
from jaxcolor.runtime import stop_signals


def export(path: str, out_dir: str, step: Optional[int] = None,
           allowed_families: Sequence[str] = ()) -> str:
  """The model at `path` (its checkpoint of `step`, default the newest
  intact) -> a bundle at `out_dir`; its path. `allowed_families`: import
  paths of families the model may name."""
  if not out_dir:
    raise ValueError('--output=DIR is required for --mode=export')
  inference.check_bundle_target(out_dir)
  # Read and checked before the output folder is made or locked.
  predictor = inference.load(path, step=step,
                             allowed_families=allowed_families)
  with folder_lock.output_folder(out_dir, 'export run'), \
      stop_signals.raised():
    inference.write_bundle(predictor, out_dir)
  logging.info('Exported %s (%s, step %d) to %s', path, predictor.model_name,
               predictor.step, out_dir)
  return out_dir


def main(config, args) -> None:
  del config  # the run's own, read from --workdir
  export(args.workdir, args.output, step=args.step,
         allowed_families=args.allow_families)
