#!/usr/bin/env bash
# One-shot device check (benchmarks/device_check.py): on a machine with a
# GPU or TPU, in at most 8 minutes, the device, the tests that matter there,
# the benchmark table and the PyTorch peer, into OUT/device_check.{json,md}.
#   bash benchmarks/device_check.sh OUT [--quick]
# PY picks the Python (default python3); PEER_DIR the PyTorch peer.
set -euo pipefail
OUT=${1:?usage: benchmarks/device_check.sh OUT [--quick]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
"${PY:-python3}" benchmarks/device_check.py --out "$OUT" "$@" 2>&1 \
  | tee "$OUT/device_check.log"
