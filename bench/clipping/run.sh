#!/usr/bin/env bash
# Adaptive clipping on a real run: OFF / FIXED / ZSCORE (ZClip) / PERCENTILE (AutoClip), see docs/policy.md.
# Usage: bench/clipping/run.sh [extra curves.py args]
# Writes bench/clipping/results/{curves.csv,summary.json} and docs/img/clipping.png.
# Env: PY (default /opt/trainguard-venv/bin/python; needs torch, grpcio, matplotlib),
#      TG_APP_SRC (default target/quarkus-app; copied to TG_APP_DIR=/tmp/clip-app/quarkus-app when newer).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/opt/trainguard-venv/bin/python}
TG_APP_SRC=${TG_APP_SRC:-$PWD/target/quarkus-app}
TG_APP_DIR=${TG_APP_DIR:-/tmp/clip-app/quarkus-app}
if [[ ! -f $TG_APP_DIR/quarkus-run.jar || $TG_APP_SRC/quarkus-run.jar -nt $TG_APP_DIR/quarkus-run.jar ]]; then
  rm -rf "$TG_APP_DIR"; mkdir -p "$(dirname "$TG_APP_DIR")"
  cp -r "$TG_APP_SRC" "$TG_APP_DIR"
fi
export TRAINGUARD_JAR=$TG_APP_DIR/quarkus-run.jar
exec "$PY" bench/clipping/curves.py --out bench/clipping/results --png docs/img/clipping.png "$@"
