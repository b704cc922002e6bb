#!/usr/bin/env bash
# Runs on the GPU machine (repo root, .bundle and .whl carried): installs grpcio/protobuf wheels,
# unpacks the jlinked JRE and the sidecar, starts the sidecar on a Unix socket, waits for
# /q/health/ready, runs the benchmark at each batch size, leaves JSON and logs in $OUT.
# OVERHEAD_ARGS passes options to overhead.py (e.g. "--host-sync --profile" or "--compile"); TAG
# names their result files.
set -uo pipefail
source bench/gpu/sidecar-up.sh
for B in ${BATCHES:-8 16}; do
  [ -n "${SKIP_OVERHEAD:-}" ] && break
  python3 bench/gpu/overhead.py --target unix:///tmp/tg.sock --batch "$B" --rounds "${ROUNDS:-7}" --steps "${STEPS:-30}" \
    --variants "${VARIANTS:-tg,tg_nolag,tg_all,naive,scaler,anomaly}" ${OVERHEAD_ARGS:-} \
    --out "$OUT/overhead${TAG:+-$TAG}-b$B.json" 2>&1 | grep -v Warning | tee "$OUT/bench${TAG:+-$TAG}-b$B.log"
done
# FRAMEWORKS=lightning,hf: the same LM through trainguard.lightning / trainguard.hf (frameworks.py)
if [ -n "${FRAMEWORKS:-}" ]; then
  for B in ${BATCHES:-8 16}; do
    python3 bench/gpu/frameworks.py --target unix:///tmp/tg.sock --batch "$B" --rounds "${FW_ROUNDS:-5}" \
      --steps "${STEPS:-30}" --frameworks "$FRAMEWORKS" --out "$OUT/frameworks-b$B.json" 2>&1 \
      | grep -v Warning | tee "$OUT/frameworks-b$B.log"
  done
fi
kill "$(cat /tmp/tg/pid)" 2>/dev/null; true
