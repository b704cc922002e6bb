"""Writes one diverged training state three ways (torch.save, DCP, safetensors) for the checkpoint
forensics test, and what torch itself computes about every tensor (expected.json).

usage: python write_forensics_checkpoints.py OUT_DIR
  OUT_DIR/state.pt     torch.save of {"model": ..., "optimizer": ..., "step": ...}; model.wt is a
                       transposed view (strided in its storage), model.ws a slice of the same
                       storage (rows apart), model.b16 bf16
  OUT_DIR/dcp/         torch.distributed.checkpoint.save of the model tensors (one process)
  OUT_DIR/model.safetensors  the model tensors, contiguous
  OUT_DIR/legacy.pt    torch.save without the zip format (pre-1.6 layout)
  OUT_DIR/expected.json  per tensor name: nan, inf, first flat indices, finite min/max/mean/std
                       (float64, population std), the rows (dim 0) holding non-finite values
"""
import json
import os
import sys
import warnings

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(7)
w = torch.randn(64, 8192, generator=g)           # rows of 8192: larger than the test's 4096-element chunks
w[37, 5] = float("nan")                           # the known index: flat 37 * 8192 + 5
w[37, 8000] = float("inf")
w[50, :] = float("nan")                           # a whole row
base = torch.randn(96, 48, generator=g)
base[10, 3] = float("-inf")
base[20, 7] = float("nan")
wt = base.t()                                     # [48, 96], stride (1, 48): element (3, 10) is -inf
ws = base[2:90, 5:40]                             # [88, 35], stride (48, 1): rows of 35 apart; (18, 2) is NaN
b16 = (torch.randn(10000, generator=g) * 3).to(torch.bfloat16)
b16[9000] = float("nan")                          # block 2 of the 4096-element blocks
clean = torch.linspace(-2, 5, 1000)
exp_avg_sq = torch.rand(64, 8192, generator=g)
exp_avg_sq[3, 7] = float("nan")
model = {"w": w, "wt": wt, "ws": ws, "b16": b16, "clean": clean}
state = {"model": model, "optimizer": {"state": {0: {"exp_avg_sq": exp_avg_sq, "step": torch.tensor(12.0)}}},
         "step": 12}
torch.save(state, os.path.join(out, "state.pt"))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    dcp.save({"model": model}, checkpoint_id=os.path.join(out, "dcp"))
save_file({f"model.{k}": v.contiguous() for k, v in model.items()}, os.path.join(out, "model.safetensors"))


def facts(t):
    x = t.double().flatten()
    bad = ~torch.isfinite(x)
    fin = x[~bad]
    rows = t.shape[0] if t.dim() >= 2 else None
    unit = (t.numel() // t.shape[0]) if t.dim() >= 2 else 4096
    units = sorted({int(i) // unit for i in torch.nonzero(bad).flatten().tolist()})
    return {"nan": int(torch.isnan(x).sum()), "inf": int(torch.isinf(x).sum()),
            "first": torch.nonzero(bad).flatten()[:16].tolist(),
            "min": fin.min().item(), "max": fin.max().item(), "mean": fin.mean().item(),
            "std": fin.std(unbiased=False).item(), "unit": "row" if rows else "block", "unit_elements": unit,
            "units": len(units), "first_units": units[:16]}


expected = {f"model.{k}": facts(v) for k, v in model.items()}
expected["optimizer.state.0.exp_avg_sq"] = facts(exp_avg_sq)
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
# a pre-1.6 pickle (not a zip): UNVERIFIABLE, so forensics must refuse it with a reason
torch.save({"w": clean}, os.path.join(out, "legacy.pt"), _use_new_zipfile_serialization=False)
