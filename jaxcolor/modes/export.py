"""`--mode=export`: a trained model -> a small inference bundle.

The bundle (`jaxcolor.inference`: bundle.json + params.msgpack) holds only
what colorizing needs: the inference params, the config and the training
set's mean chroma; no optimiser state or critic.
"""

from typing import Optional

from absl import logging

from jaxcolor import inference


def export(path: str, out_dir: str, step: Optional[int] = None) -> str:
  """The model at `path` (its checkpoint of `step`, default the newest
  intact) -> a bundle at `out_dir`; its path."""
  if not out_dir:
    raise ValueError('--output=DIR is required for --mode=export')
  predictor = inference.load(path, step=step)
  inference.write_bundle(predictor, out_dir)
  logging.info('Exported %s (%s, step %d) to %s', path, predictor.model_name,
               predictor.step, out_dir)
  return out_dir


def main(config, args) -> None:
  del config  # the run's own, read from --workdir
  export(args.workdir, args.output, step=args.step)
