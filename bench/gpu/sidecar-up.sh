# Sourced by the device commands (bench/gpu/*-cmd.sh) on the GPU machine, from the repo root with
# .bundle and .whl carried (bench/gpu/run.sh builds them): installs the grpcio/protobuf wheels,
# records the GPU, unpacks the jlink-ed JRE and the sidecar, starts it on the Unix socket
# /tmp/tg.sock (plus any -D options in SIDECAR_PROPS) and waits for readiness on the management port
# (9000). Sets OUT and PYTHONPATH.
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl $(ls .whl-prof/*.whl 2>/dev/null) || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, grpc, google.protobuf as p; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'grpcio', grpc.__version__, 'protobuf', p.__version__)" | tee -a "$OUT/gpu.txt"
mkdir -p /tmp/tg/jre && python3 -c "import tarfile; tarfile.open('.bundle/jre.tar.xz').extractall('/tmp/tg/jre'); tarfile.open('.bundle/app.tar.xz').extractall('/tmp/tg')" || exit 1
rm -f /tmp/j.db /tmp/tg.sock
(cd /tmp/tg && setsid jre/bin/java -Dtrainguard.journal.path=/tmp/j.db -Dtrainguard.listen.socket=/tmp/tg.sock \
   ${SIDECAR_PROPS:-} -jar quarkus-app/quarkus-run.jar > "$OUT/sidecar.log" 2>&1 & echo $! > /tmp/tg/pid)
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
