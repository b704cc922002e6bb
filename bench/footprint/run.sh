#!/usr/bin/env bash
# Sidecar footprint: start-to-ready (median of 5), RSS idle, RSS under a 64-rank streaming load.
# Usage: bench/footprint/run.sh   (result: bench/footprint/results/footprint.json)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-/usr/bin/python3}
OUT=${OUT:-results}
mkdir -p "$OUT"
"$PY" footprint.py --starts "${STARTS:-5}" --idle "${IDLE_S:-10}" --load-seconds "${LOAD_S:-10}" --json "$OUT/footprint.json"
