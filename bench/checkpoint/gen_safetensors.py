#!/usr/bin/env python3
"""Writes a multi-GB safetensors file of N tensors (fp32 or bf16) with numpy only.

Real checkpoints are many tensors of 1-500 MB; we write `--tensors` of equal size filled with
normal(0, 0.02) values (one random block reused, so generation is fast but data is not constant).
"""
import argparse, json, struct, sys
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("path")
p.add_argument("--gb", type=float, default=4.0)
p.add_argument("--dtype", choices=["F32", "BF16", "F16"], default="F32")
p.add_argument("--tensors", type=int, default=64)
a = p.parse_args()

itemsize = 4 if a.dtype == "F32" else 2
total = int(a.gb * (1 << 30))
per = (total // a.tensors) // 4096 * 4096
n = per // itemsize
rng = np.random.default_rng(0)
block = rng.normal(0, 0.02, size=min(n, 16 << 20)).astype(np.float32)
if a.dtype == "BF16":
    block = (block.view(np.uint32) >> 16).astype(np.uint16)
elif a.dtype == "F16":
    block = block.astype(np.float16)
header = {"__metadata__": {"format": "pt"}}
for i in range(a.tensors):
    header[f"layers.{i}.weight"] = {"dtype": a.dtype, "shape": [n], "data_offsets": [i * per, (i + 1) * per]}
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(a.path, "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    raw = block.tobytes()
    for i in range(a.tensors):
        left = per
        while left > 0:
            chunk = raw[: min(left, len(raw))]
            f.write(chunk)
            left -= len(chunk)
print(f"{a.path}: {a.tensors} x {per} bytes {a.dtype}", file=sys.stderr)
