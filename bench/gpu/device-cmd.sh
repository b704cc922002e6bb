#!/usr/bin/env bash
# Runs on the GPU machine (repo root, .bundle and .whl carried): installs grpcio/protobuf wheels,
# unpacks the jlinked JRE and the sidecar, starts the sidecar on a Unix socket, waits for
# /q/health/ready, runs the benchmark at each batch size, leaves JSON and logs in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, grpc, google.protobuf as p; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'grpcio', grpc.__version__, 'protobuf', p.__version__)" | tee -a "$OUT/gpu.txt"
mkdir -p /tmp/tg/jre && python3 -c "import tarfile; tarfile.open('.bundle/jre.tar.xz').extractall('/tmp/tg/jre'); tarfile.open('.bundle/app.tar.xz').extractall('/tmp/tg')" || exit 1
rm -f /tmp/j.db /tmp/tg.sock
(cd /tmp/tg && setsid jre/bin/java -Dtrainguard.journal.path=/tmp/j.db -Dtrainguard.listen.socket=/tmp/tg.sock \
   -jar quarkus-app/quarkus-run.jar > "$OUT/sidecar.log" 2>&1 & echo $! > /tmp/tg/pid)
python3 - <<'PY' || { tail -30 "$OUT/sidecar.log"; exit 1; }
import time, urllib.request
t0 = time.time()
while time.time() - t0 < 120:
    try:
        if urllib.request.urlopen("http://127.0.0.1:9000/q/health/ready", timeout=2).status == 200:
            print(f"sidecar ready after {time.time() - t0:.1f}s"); break
    except Exception:
        time.sleep(0.5)
else:
    raise SystemExit("sidecar not ready")
PY
for B in ${BATCHES:-8 16}; do
  [ -n "${SKIP_OVERHEAD:-}" ] && break
  python3 bench/gpu/overhead.py --target unix:///tmp/tg.sock --batch "$B" --rounds "${ROUNDS:-7}" --steps "${STEPS:-30}" \
    --variants "${VARIANTS:-tg,tg_nolag,tg_all,naive,scaler,anomaly}" \
    --out "$OUT/overhead-b$B.json" 2>&1 | grep -v Warning | tee "$OUT/bench-b$B.log"
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
