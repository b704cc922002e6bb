#!/usr/bin/env python3
"""A checkpoint as a trainer writes it: safetensors.torch.save_file of 64 fp32 tensors of 4-64 MiB
(1.95 GB), straight into the page cache. Prints how much of it the page cache holds in 2 MiB folios
(FileHugePages before/after). Needs torch and safetensors (the client venv).

    /opt/trainguard-venv/bin/python bench/checkpoint/trainer_checkpoint.py /tmp/trainer.safetensors
"""
import sys
import time

import torch
from safetensors.torch import save_file


def huge_kib():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("FileHugePages:"))


path = sys.argv[1]
torch.manual_seed(0)
sizes = [16 << 20, 4 << 20, 1 << 20, 8 << 20] * 16  # elements
tensors = {f"layers.{i}.weight": torch.randn(n) * 0.02 for i, n in enumerate(sizes)}
before = huge_kib()
t0 = time.time()
save_file(tensors, path)
size = sum(n * 4 for n in sizes)
print(f"{path}: {size / 1e9:.2f} GB written in {time.time() - t0:.1f} s; FileHugePages grew by "
      f"{(huge_kib() - before) * 1024 / 1e9:.2f} GB")
