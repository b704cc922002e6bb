"""Why the gate's host pieces cost more inside the training loop than alone: times the address
table's identity check (``GradTable.matches``) and walk (``GradTable.upload``), and a plain Python
loop of the same length, (a) alone after a synchronize and (b) right after each step's backward,
in an eager and a compiled GPT-2-small loop (no guard, no sidecar). ``grads`` is the first Python
access to a step's fresh gradients (it creates their Python objects), in the loop; alone they exist.
The seventh pass's run (results/2026-11-30-s11-host-probe.json) had the first rewrites of
``matches`` (which still built a list of ids) and ``upload``.

Usage: python host_probe.py --out res.json
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from trainguard.grad_table import GradTable  # noqa: E402
from gpt_model import GPT, GPT2_SMALL  # noqa: E402


def timed(fn, n=1):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda", torch.cuda.current_device())
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    params_n = 148

    def pyloop():
        s = 0
        for i in range(params_n):
            s += i
        return s

    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = GPT(**GPT2_SMALL).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
        fwd = torch.compile(model) if mode == "compiled" else model
        x = torch.randint(0, GPT2_SMALL["vocab"], (8, GPT2_SMALL["seq"] + 1), device=dev)
        x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()
        table = None
        rows = {}
        for step in range(a.steps + 3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(x, y)
            loss.backward()
            if table is None:
                table = GradTable(opt, dev)
                calls = {"grads": lambda: [p.grad for g in opt.param_groups for p in g["params"]],  # first: creates them
                         "matches": lambda: table.matches(opt), "upload": table.upload, "pyloop": pyloop}
            if step >= 3:  # in the loop: right after backward, as the guard runs
                for name, fn in calls.items():
                    rows.setdefault(name, []).append(timed(fn))
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        in_loop = {k: statistics.median(v) for k, v in rows.items()}
        # alone: the same calls with the device idle, repeated
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x, y)
        loss.backward()
        torch.cuda.synchronize()
        alone = {name: timed(fn, 200) for name, fn in calls.items()}
        res[mode] = {"in_loop_us_median": in_loop, "alone_us": alone}
        print(mode, json.dumps(res[mode]))
        del model, opt, fwd
        torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
