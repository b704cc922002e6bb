#!/usr/bin/env bash
# Checkpoint verification throughput: Java scanner vs np.isfinite vs torch.isfinite, same files,
# same run, interleaved rounds. Java: the default (mapped reads, vector kernels, tg1 checksum, after the sidecar's JIT
# warm-up), the same with pread through a buffer (-Dread=pread), scalar kernels (-Dsimd=false), the CRC32C checksum
# instead of tg1, finite check only (-Dstats=false, no checksum).
# Results: medians in GB/s (1e9 bytes/s) and the scanning JVM's RSS.
#
#   bench/checkpoint/run.sh [rounds]        env: F32_GB (4) BF16_GB (2) THREADS (2) DIR (/tmp) CACHE (reread|as-is)
#
# SET=formats: the formats people save, same fp32 state dict (gen_torch.py, venv torch) as torch.save,
# a DCP directory and safetensors (TORCH_GB, 3): the Java verifier's path for each (CheckpointVerifier,
# 3 scans per JVM, the order rotated each round) next to the naive load + torch.isfinite of each (compare.py torch-load, torch-load-mmap,
# dcp-load, st-load) and torch.isfinite over a safetensors memmap, in the same rounds.
#   SET=formats bench/checkpoint/run.sh [rounds]   env: TORCH_GB (3) SD ($DIR/tg-bench-sd) KEEP (1: keep the generated files; default: deleted at the end)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}; F32_GB=${F32_GB:-4}; BF16_GB=${BF16_GB:-2}; THREADS=${THREADS:-2}; DIR=${DIR:-/tmp}
F32=$DIR/tg-bench-f32.safetensors; BF16=$DIR/tg-bench-bf16.safetensors
PY=/usr/bin/python3   # Debian python3-numpy + python3-torch
VENV_PY=${VENV_PY:-/opt/trainguard-venv/bin/python}   # current torch, safetensors (SET=formats)
SD=${SD:-$DIR/tg-bench-sd}
if [ "${SET:-safetensors}" = formats ]; then
  [ -s "$SD.pt" ] && [ -s "$SD.safetensors" ] && [ -s "$SD.dcp/.metadata" ] \
    || $VENV_PY bench/checkpoint/gen_torch.py "$SD" --gb "${TORCH_GB:-3}"
  FILES=("$SD.pt" "$SD.safetensors" "$SD.dcp/.metadata" "$SD".dcp/*.distcp)
else
  [ -s "$F32" ] || $PY bench/checkpoint/gen_safetensors.py "$F32" --gb "$F32_GB" --dtype F32
  [ -s "$BF16" ] || $PY bench/checkpoint/gen_safetensors.py "$BF16" --gb "$BF16_GB" --dtype BF16
  FILES=("$F32" "$BF16")
fi
sync
# Into the page cache in a known state: dropped, then read back sequentially, so readahead fills it
# with large folios (ext4, Linux >= 6.16), as a checkpoint written in large writes also is. CACHE=as-is
# keeps whatever the page cache holds (e.g. the generator's own pages).
for f in "${FILES[@]}"; do
  if [ "${CACHE:-reread}" = reread ]; then
    $PY -c 'import os, sys; os.posix_fadvise(os.open(sys.argv[1], os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)' "$f"
  fi
  cat "$f" > /dev/null
done
NPY=$DIR/tg-bench-small.npy; $PY -c "import numpy as np; np.save('$NPY', np.ones(1000, np.float32))"
if [ -z "${SKIP_BUILD:-}" ]; then
  ./mvnw -q -B -o test-compile
  ./mvnw -q -B -o dependency:build-classpath -Dmdep.outputFile=target/bench-cp.txt >/dev/null
fi
CP=target/test-classes:target/classes:$(cat target/bench-cp.txt)
HAVE_TORCH=$($PY -c 'import torch' 2>/dev/null && echo 1 || echo 0)
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# page cache: $(grep -E '^(Cached|FileHugePages):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')(CACHE=${CACHE:-reread})"
echo "# java: $(java -version 2>&1 | head -1); numpy $($PY -c 'import numpy; print(numpy.__version__)'); torch $([ $HAVE_TORCH = 1 ] && $PY -c 'import torch; print(torch.__version__)' || echo absent)"
J="java -Xmx256m --add-modules jdk.incubator.vector -cp $CP"
if [ "${SET:-safetensors}" = formats ]; then
  echo "# venv: torch $($VENV_PY -c 'import torch; print(torch.__version__)'); files: $(du -sb "$SD.pt" "$SD.dcp" "$SD.safetensors" | awk '{printf "%s=%s ", $2, $1}')"
  for r in $(seq "$ROUNDS"); do
    echo "## round $r (load $(cut -d' ' -f1 /proc/loadavg); resident in the page cache: $(fincore -nb -o RES,FILE "$SD.pt" "$SD.safetensors" "$SD".dcp/*.distcp | awk '{printf "%s=%.2fGB ", $2, $1/1e9}'))"
    ORDER=("$SD.pt" "$SD.dcp" "$SD.safetensors"); ORDER=("${ORDER[@]:$(( (r - 1) % 3 ))}" "${ORDER[@]:0:$(( (r - 1) % 3 ))}")
    $J -Dwarmup=true -Dverifier=true io.trainguard.tensor.scan.ScanBench "$THREADS" tg1 3 "${ORDER[@]}" 2>/dev/null \
      | grep -E "ROUND|MEDIAN|RSS"
    for t in torch-load torch-load-mmap; do THREADS=$THREADS $VENV_PY bench/checkpoint/compare.py $t "$SD.pt" 1; done
    THREADS=$THREADS $VENV_PY bench/checkpoint/compare.py dcp-load "$SD.dcp" 1
    THREADS=$THREADS $VENV_PY bench/checkpoint/compare.py st-load "$SD.safetensors" 1
    $VENV_PY bench/checkpoint/compare.py torch "$SD.safetensors" 1
  done
  [ -n "${KEEP:-}" ] || rm -rf "$SD.pt" "$SD.dcp" "$SD.safetensors" "$NPY"
  exit 0
fi
for r in $(seq "$ROUNDS"); do
  echo "## round $r (load $(cut -d' ' -f1 /proc/loadavg))"
  $J -Dwarmup=true -DdjlNpy="$NPY" io.trainguard.tensor.scan.ScanBench "$THREADS" tg1 3 "$F32" "$BF16" 2>/dev/null | grep -E "ROUND|MEDIAN|RSS"
  $J -Dwarmup=true -Dread=pread io.trainguard.tensor.scan.ScanBench "$THREADS" tg1 3 "$F32" "$BF16" 2>/dev/null | grep -E 'MEDIAN'
  $J -Dsimd=false io.trainguard.tensor.scan.ScanBench "$THREADS" tg1 3 "$F32" "$BF16" 2>/dev/null | grep -E 'MEDIAN'
  $J -Dwarmup=true io.trainguard.tensor.scan.ScanBench "$THREADS" crc32c 3 "$F32" "$BF16" 2>/dev/null | grep -E 'MEDIAN'
  $J -Dstats=false io.trainguard.tensor.scan.ScanBench "$THREADS" none 3 "$F32" "$BF16" 2>/dev/null | grep -E "MEDIAN"
  $PY bench/checkpoint/compare.py numpy "$F32"; $PY bench/checkpoint/compare.py numpy "$BF16"
  if [ "$HAVE_TORCH" = 1 ]; then
    $PY bench/checkpoint/compare.py torch "$F32" 1; $PY bench/checkpoint/compare.py torch "$BF16" 1
  fi
done
