#!/usr/bin/env python3
"""Plain page-cache read speed of a resident file, pass after pass, after it sat idle: on the
benchmark VM pages that were not touched for a minute or more read at half speed or less in the
first pass (a host-side memory effect; no JIT, no kernels involved). Explains why the first
verification after a quiet period is slower than the next.

    bench/checkpoint/cold_read.py FILE [--idle SECONDS] [--passes N]
"""
import argparse
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("file")
ap.add_argument("--idle", type=float, default=0.0, help="seconds to wait before the first pass")
ap.add_argument("--passes", type=int, default=3)
a = ap.parse_args()
time.sleep(a.idle)
buf = memoryview(bytearray(1 << 16))  # 64 KiB: Debian's Python reads 128 KiB buffers far slower
for p in range(a.passes):
    fd = os.open(a.file, os.O_RDONLY)
    t, n = time.perf_counter(), 0
    while True:
        k = os.readv(fd, [buf])
        if k == 0:
            break
        n += k
    os.close(fd)
    print(f"pass {p}: {n / (time.perf_counter() - t) / 1e9:.1f} GB/s", flush=True)
