#!/usr/bin/env bash
# Runs bench/gpu/recovery.py on the GPU machine (repo root, .bundle and .whl carried, as built by
# bench/gpu/run.sh): installs the wheels, starts the sidecar on a Unix socket, runs the benchmark,
# leaves JSON and logs in $OUT.
#   run(command="bash bench/gpu/recovery-cmd.sh", carry=[".bundle", ".whl"], timeout_s=600)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
free -g | tee -a "$OUT/gpu.txt"
mkdir -p /tmp/tg/jre && python3 -c "import tarfile; tarfile.open('.bundle/jre.tar.xz').extractall('/tmp/tg/jre'); tarfile.open('.bundle/app.tar.xz').extractall('/tmp/tg')" || exit 1
rm -f /tmp/j.db /tmp/tg.sock
(cd /tmp/tg && setsid jre/bin/java -Dtrainguard.journal.path=/tmp/j.db -Dtrainguard.listen.socket=/tmp/tg.sock \
   -jar quarkus-app/quarkus-run.jar > "$OUT/sidecar.log" 2>&1 & echo $! > /tmp/tg/pid)
python3 - <<'PY' || { tail -30 "$OUT/sidecar.log"; exit 1; }
import time, urllib.request
t0 = time.time()
while time.time() - t0 < 120:
    try:
        if urllib.request.urlopen("http://127.0.0.1:7474/q/health/ready", timeout=2).status == 200:
            print(f"sidecar ready after {time.time() - t0:.1f}s"); break
    except Exception:
        time.sleep(0.5)
else:
    raise SystemExit("sidecar not ready")
PY
python3 bench/gpu/recovery.py --target unix:///tmp/tg.sock --batch "${BATCH:-8}" --rounds "${ROUNDS:-5}" \
  --steps "${STEPS:-50}" --interval "${INTERVAL:-25}" --out "$OUT/recovery-b${BATCH:-8}.json" 2>&1 | grep -v Warning \
  | tee "$OUT/recovery.log"
kill "$(cat /tmp/tg/pid)" 2>/dev/null; true
