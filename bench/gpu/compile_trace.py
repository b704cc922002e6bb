"""Where a guarded ``torch.compile`` step spends its extra time (issue 21): kernels or an idle GPU.

The model of overhead.py compiled twice (one copy unguarded, one hooked by a Guard and then compiled,
as overhead.py --compile does), warmed up, then blocks of ``--block`` steps of each in turn under
torch.profiler, every step a named range. hf_trace.py's analysis then splits each step into GPU busy
time (the guard's kernels, by name) and GPU idle time (the host on the critical path); "paused" there
is the unguarded copy here.

Usage (GPU machine, after ``source bench/gpu/sidecar-up.sh``):
    python3 bench/gpu/compile_trace.py --batch 8 --block 10 --blocks 4 --out res.json
"""
import argparse
import contextlib
import copy
import json
import os
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_trace import analyse, summary  # noqa: E402  (frameworks puts the client on sys.path)
from gpt_model import GPT, GPT2_SMALL  # noqa: E402
from trainguard.guard import Guard  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=10, help="steps of one copy before switching to the other")
    ap.add_argument("--blocks", type=int, default=4, help="profiled blocks per copy")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = GPT(**GPT2_SMALL).to(dev)
    copies = {}
    for phase in ("paused", "guarded"):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
        g = None
        if phase == "guarded":
            g = Guard(m, opt, f"compile-trace-b{a.batch}-{os.getpid()}", target=a.target, deadline=2.0,
                      autocast_dtype=torch.bfloat16)
        copies[phase] = (torch.compile(m), opt, g)  # compiled after the Guard's hooks are on
    data = [torch.randint(0, GPT2_SMALL["vocab"], (a.batch, GPT2_SMALL["seq"] + 1), device=dev) for _ in range(4)]
    data = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in data]
    counter = {"paused": 0, "guarded": 0}

    def step(phase, name=None):
        fwd, opt, g = copies[phase]
        i = counter[phase]
        counter[phase] += 1
        x, y = data[i % len(data)]
        with record_function(name) if name else contextlib.nullcontext():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(x, y)
            loss.backward()
            if g is not None:
                g.step(i, loss)
                g.optimizer_step()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)

    for phase in ("paused", "guarded"):
        for _ in range(a.warmup):
            step(phase)
    torch.cuda.synchronize()
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    prof.start()
    k = 0
    for b in range(a.blocks):
        for phase in ("paused", "guarded"):
            for _ in range(a.block):
                step(phase, f"{phase}-{k}")
                k += 1
            torch.cuda.synchronize()  # a block's last step is not charged for the next block's start
    prof.stop()
    copies["guarded"][2].close()
    rows, kernels, runtime = analyse(prof.profiler.kineto_results.events())
    res = {"batch": a.batch, "block": a.block, "blocks": a.blocks, "gpu": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "summary": summary(rows, kernels, runtime), "steps": rows}
    print(json.dumps(res["summary"], indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
