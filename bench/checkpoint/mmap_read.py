#!/usr/bin/env python3
"""Why the scanner reads with pread instead of mapping the file: maps a page-cached file (plain and
with MAP_POPULATE), reads it through numpy, unmaps, and prints where the time goes. Needs numpy
(Debian python3-numpy).

    /usr/bin/python3 bench/checkpoint/mmap_read.py FILE
"""
import mmap
import os
import sys
import time

import numpy as np

path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size // 4096 * 4096
for name, flags in (("plain", mmap.MAP_SHARED), ("populate", mmap.MAP_SHARED | mmap.MAP_POPULATE)):
    for _ in range(2):
        t0 = time.perf_counter()
        m = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
        t1 = time.perf_counter()
        a = np.frombuffer(m, dtype=np.float32)
        a.max()
        t2 = time.perf_counter()
        del a
        m.close()
        t3 = time.perf_counter()
        print(f"{name}: map {t1 - t0:.2f} s, first read {size / (t2 - t1) / 1e9:.1f} GB/s, unmap {t3 - t2:.2f} s, "
              f"all {size / (t3 - t0) / 1e9:.1f} GB/s (one thread)", flush=True)
os.close(fd)
