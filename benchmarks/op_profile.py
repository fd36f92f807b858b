"""Where a traced step's time went, by XLA op, from a trace folder.

`python main.py --mode=benchmark --config.profile_steps='(S,N)'` prints
this for the calls it traced and writes the step's HLO beside the trace
(`step.hlo.txt`); this script reads the two again, e.g. for more rows:

  python benchmarks/op_profile.py PROFILE_FOLDER --calls N --top 40

PROFILE_FOLDER is `<workdir>/profile/plugins/profile/<time>/` (the
benchmark's note names it). Times are per call: the trace's sum over
`--calls` calls.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxcolor.runtime import op_profile  # pylint: disable=wrong-import-position


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('folder')
  p.add_argument('--calls', type=int, default=1,
                 help='calls of the step the trace holds')
  p.add_argument('--top', type=int, default=30)
  p.add_argument('--backend', default='cpu',
                 help="the run's jax.default_backend(): cpu, gpu or tpu")
  p.add_argument('--hlo', default='',
                 help=f'the HLO text (default: FOLDER/{op_profile.HLO_FILE})')
  a = p.parse_args()
  hlo_path = a.hlo or os.path.join(a.folder, op_profile.HLO_FILE)
  try:
    with open(hlo_path, encoding='utf-8') as f:
      hlo = f.read()
    summary = op_profile.summarize(a.folder, hlo, a.calls, a.backend, a.top)
  except (OSError, ValueError) as e:
    print(f'op_profile: {e}', file=sys.stderr)
    return 1
  print(op_profile.table(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
