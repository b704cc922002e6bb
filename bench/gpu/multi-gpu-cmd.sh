#!/usr/bin/env bash
# Runs on a multi-GPU machine (repo root, .bundle and .whl carried; built by bench/gpu/run.sh):
# installs the grpcio/protobuf wheels, unpacks the jlinked JRE and the sidecar, starts ONE sidecar on
# a Unix socket for every rank, runs bench/gpu/multi_gpu.py (DDP over NCCL on every visible GPU),
# leaves JSON and logs in $OUT.
#   run(command="bash bench/gpu/multi-gpu-cmd.sh", kind="nvidia-h200-x2", carry=[".bundle", ".whl"])
#   env: BATCHES="8 16" ROUNDS=5 STEPS=20 NPROC=<all GPUs>; FSDP=1 FSDP_BATCHES=8 adds the FSDP2 overhead run
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0  # NVLink multicast off (the device machines' KINDS.md)
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1
python3 -c "import torch, grpc, google.protobuf as p; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), torch.cuda.device_count(), 'x', torch.cuda.get_device_name(0), 'grpcio', grpc.__version__, 'protobuf', p.__version__)" | tee -a "$OUT/gpu.txt"
mkdir -p /tmp/tg/jre && python3 -c "import tarfile; tarfile.open('.bundle/jre.tar.xz').extractall('/tmp/tg/jre'); tarfile.open('.bundle/app.tar.xz').extractall('/tmp/tg')" || exit 1
rm -rf /tmp/j.db /tmp/tg.sock /tmp/mg-ckpt && mkdir -p /tmp/mg-ckpt
(cd /tmp/tg && setsid jre/bin/java -Dtrainguard.journal.path=/tmp/j.db -Dtrainguard.listen.socket=/tmp/tg.sock \
   -Dtrainguard.checkpoint.roots=/tmp/mg-ckpt -jar quarkus-app/quarkus-run.jar > "$OUT/sidecar.log" 2>&1 & echo $! > /tmp/tg/pid)
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
python3 bench/gpu/multi_gpu.py --target unix:///tmp/tg.sock --ckpt-dir /tmp/mg-ckpt ${NPROC:+--nproc $NPROC} \
  --batch ${BATCHES:-8 16} --rounds "${ROUNDS:-5}" --steps "${STEPS:-20}" --out "$OUT/multi-gpu.json" 2>&1 \
  | grep -v Warning | tee "$OUT/multi-gpu.log"
# FSDP=1: the overhead part again under FSDP2 with a ~1.2B-parameter GPT (no correctness part)
if [ -n "${FSDP:-}" ]; then
  python3 bench/gpu/multi_gpu.py --fsdp --target unix:///tmp/tg.sock ${NPROC:+--nproc $NPROC} --variants tg,naive \
    --batch ${FSDP_BATCHES:-8} --rounds "${ROUNDS:-5}" --steps "${STEPS:-20}" --out "$OUT/multi-gpu-fsdp.json" 2>&1 \
    | grep -v Warning | tee "$OUT/multi-gpu-fsdp.log"
fi
kill "$(cat /tmp/tg/pid)" 2>/dev/null; true
