#!/usr/bin/env python3
"""Writes the same fp32 state dict three ways, with real torch (the venv): torch.save (zip), a
torch.distributed.checkpoint directory and safetensors, for run.sh's format comparison.

    gen_torch.py OUT_PREFIX [--gb 3] [--tensors 48]
      OUT_PREFIX.pt            torch.save(state_dict)
      OUT_PREFIX.dcp/          torch.distributed.checkpoint.save(state_dict), one process (no process
                               group: DCP's single-process mode writes one __0_0.distcp shard and
                               .metadata; the shard and metadata layout is the same as each rank's of
                               a multi-rank save, which the tests cover on 2 gloo ranks)
      OUT_PREFIX.safetensors   safetensors.torch.save_file(state_dict)

The tensors are [rows, 4096] fp32 normal(0, 0.02), like linear weights; one random block is
reused so that generation is quick while the data is not constant.
"""
import argparse
import os
import shutil
import sys
import warnings

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("prefix")
p.add_argument("--gb", type=float, default=3.0)
p.add_argument("--tensors", type=int, default=48)
a = p.parse_args()

cols = 4096
rows = int(a.gb * (1 << 30)) // a.tensors // (cols * 4)
block = torch.randn(min(rows, 1024), cols) * 0.02
sd = {}
for i in range(a.tensors):
    t = torch.empty(rows, cols)
    for r in range(0, rows, block.shape[0]):
        n = min(block.shape[0], rows - r)
        t[r:r + n] = block[:n]
    t[0, 0] = float(i)  # each tensor differs
    sd[f"layers.{i}.weight"] = t
torch.save(sd, a.prefix + ".pt")
if os.path.isdir(a.prefix + ".dcp"):
    shutil.rmtree(a.prefix + ".dcp")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "no process group, single-process save"
    dcp.save(sd, checkpoint_id=a.prefix + ".dcp")
save_file(sd, a.prefix + ".safetensors")
print(f"{a.prefix}.{{pt,dcp,safetensors}}: {a.tensors} x [{rows}, {cols}] fp32, torch {torch.__version__}",
      file=sys.stderr)
