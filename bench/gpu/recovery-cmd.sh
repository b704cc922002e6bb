#!/usr/bin/env bash
# Runs bench/gpu/recovery.py on the GPU machine (repo root, .bundle and .whl carried, as built by
# bench/gpu/run.sh): installs the wheels, starts the sidecar on a Unix socket, runs the benchmark,
# leaves JSON and logs in $OUT.
#   run(command="bash bench/gpu/recovery-cmd.sh", carry=[".bundle", ".whl"], timeout_s=600)
set -uo pipefail
source bench/gpu/sidecar-up.sh
python3 bench/gpu/recovery.py --target unix:///tmp/tg.sock --batch "${BATCH:-8}" --rounds "${ROUNDS:-5}" \
  --steps "${STEPS:-50}" --interval "${INTERVAL:-25}" --out "$OUT/recovery-b${BATCH:-8}.json" 2>&1 | grep -v Warning \
  | tee "$OUT/recovery.log"
kill "$(cat /tmp/tg/pid)" 2>/dev/null; true
