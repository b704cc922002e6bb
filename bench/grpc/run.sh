#!/usr/bin/env bash
# gRPC latency + throughput benchmarks of the trainguard sidecar (see docs/benchmarks-grpc.md).
# Usage: bench/grpc/run.sh [latency|throughput|all]   (results: bench/grpc/results/*.json)
# Env: PY (default /usr/bin/python3: Debian grpcio 1.51 / protobuf 3.21, the client the issue names),
#      TG_APP_SRC (default target/quarkus-app; copied to TG_APP_DIR=/tmp/bench-app when newer).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-/usr/bin/python3}
OUT=${OUT:-results}
mkdir -p "$OUT"
what=${1:-all}
if [[ $what == latency || $what == all ]]; then
  "$PY" latency.py --rounds "${ROUNDS:-7}" --calls "${CALLS:-2000}" --warmup "${WARMUP:-2000}" --json "$OUT/latency.json"
fi
if [[ $what == throughput || $what == all ]]; then
  "$PY" throughput.py --ranks 8,64 --procs "${PROCS:-4}" --seconds "${SECONDS_PER_RUN:-15}" --json "$OUT/throughput.json"
fi
