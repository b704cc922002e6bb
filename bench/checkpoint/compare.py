#!/usr/bin/env python3
"""Reference finite checks on the same safetensors file: numpy or torch, from a memmap.

usage: compare.py numpy|torch FILE [passes]   -> prints "MEDIAN tool=... gbps=..."
bf16 has no numpy dtype: numpy checks the exponent bits of the uint16 view instead
((x & 0x7F80) == 0x7F80), which is the same test the Java scanner does.
"""
import json, statistics, struct, sys, time
import numpy as np

tool, path = sys.argv[1], sys.argv[2]
passes = int(sys.argv[3]) if len(sys.argv) > 3 else 3
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
header.pop("__metadata__", None)
dtypes = {v["dtype"] for v in header.values()}
assert len(dtypes) == 1, dtypes
dtype = dtypes.pop()
mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
if tool == "torch":
    import torch
    torch.set_num_threads(1)
res = []
for _ in range(passes):
    t = time.perf_counter()
    if tool == "numpy":
        if dtype == "F32":
            ok = bool(np.isfinite(mm.view(np.float32)).all())
        else:
            ok = not bool(((mm.view(np.uint16) & 0x7F80) == 0x7F80).any())
    else:
        import warnings; warnings.filterwarnings("ignore")
        raw = torch.from_numpy(mm.view(np.int32 if dtype == "F32" else np.int16))
        x = raw.view(torch.float32 if dtype == "F32" else torch.bfloat16)
        ok = bool(torch.isfinite(x).all())
    dt = time.perf_counter() - t
    res.append(mm.nbytes / dt / 1e9)
    assert ok
print(f"MEDIAN tool={tool} file={path.split('/')[-1]} gbps={statistics.median(res):.2f} passes={passes}")
