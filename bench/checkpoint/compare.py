#!/usr/bin/env python3
"""Reference finite checks on the same safetensors file: numpy or torch, from a memmap.

usage: compare.py numpy|torch FILE [passes]   -> prints "MEDIAN tool=... gbps=..."
bf16 has no numpy dtype: numpy checks the exponent bits of the uint16 view instead
((x & 0x7F80) == 0x7F80), which is the same test the Java scanner does.

The naive alternative a training script would write, load then torch.isfinite on every tensor
(venv torch; GB/s over the file's or directory's bytes):
  compare.py torch-load FILE.pt        torch.load(weights_only=True)
  compare.py torch-load-mmap FILE.pt   torch.load(weights_only=True, mmap=True): no copy of the storages
  compare.py dcp-load DIR              torch.distributed.checkpoint.load into preallocated tensors
  compare.py st-load FILE.safetensors  safetensors.torch.load_file
"""
import json, os, statistics, struct, sys, time
import numpy as np

tool, path = sys.argv[1], sys.argv[2]
passes = int(sys.argv[3]) if len(sys.argv) > 3 else 3


def naive(tool, path, passes):
    import gc, warnings
    import torch
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    size = (sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) if os.path.isdir(path)
            else os.path.getsize(path))
    template = None
    if tool == "dcp-load":  # DCP loads in place: the trainer has its model's tensors already
        import torch.distributed.checkpoint as dcp
        md = dcp.FileSystemReader(path).read_metadata()
        template = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in md.state_dict_metadata.items()}
    res = []
    for _ in range(passes):
        t = time.perf_counter()
        if tool == "torch-load":
            sd = torch.load(path, weights_only=True)
        elif tool == "torch-load-mmap":
            sd = torch.load(path, weights_only=True, mmap=True)
        elif tool == "st-load":
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            dcp.load(template, checkpoint_id=path)
            sd = template
        ok = all(bool(torch.isfinite(v).all()) for v in sd.values())
        dt = time.perf_counter() - t
        assert ok
        res.append(size / dt / 1e9)
        if sd is not template:
            del sd
        gc.collect()
    print(f"MEDIAN tool={tool} file={os.path.basename(path)} gbps={statistics.median(res):.2f} passes={passes}")


if tool in ("torch-load", "torch-load-mmap", "dcp-load", "st-load"):
    naive(tool, path, passes)
    sys.exit(0)
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
