#!/usr/bin/env bash
# Runs on a multi-GPU machine (repo root, .bundle and .whl carried; built by bench/gpu/run.sh):
# installs the grpcio/protobuf wheels, unpacks the jlinked JRE and the sidecar, starts ONE sidecar on
# a Unix socket for every rank, runs bench/gpu/multi_gpu.py (DDP over NCCL on every visible GPU),
# leaves JSON and logs in $OUT.
#   run(command="bash bench/gpu/multi-gpu-cmd.sh", kind="nvidia-h200-x2", carry=[".bundle", ".whl"])
#   env: BATCHES="8 16" ROUNDS=5 STEPS=20 NPROC=<all GPUs>; FSDP=1 FSDP_BATCHES=8 adds the FSDP2 overhead run
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0  # NVLink multicast off (the device machines' KINDS.md)
rm -rf /tmp/mg-ckpt && mkdir -p /tmp/mg-ckpt
SIDECAR_PROPS="-Dtrainguard.checkpoint.roots=/tmp/mg-ckpt" source bench/gpu/sidecar-up.sh
nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1
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
