"""Why ``p.grad`` costs ~1.5 us a parameter right after a compiled backward on the H200 host
(upload_probe.py: 242 us for the second ``[p.grad for p in params]`` of a step) when it costs
~0.13 us with the GPU idle: each access timed per parameter, in the loop, before and after a
device synchronize, with the parameters ranked by cost.

Usage: python grad_forms_probe.py [--steps 40]
"""
import argparse
import statistics
import sys
import os
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt_model import GPT, GPT2_SMALL  # noqa: E402


def per_param(params):
    out = []
    for p in params:
        t = time.perf_counter()
        p.grad
        out.append(time.perf_counter() - t)
    return out


def listcomp(params):
    t = time.perf_counter()
    [p.grad for p in params]
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--compile", type=int, default=1)
    a = ap.parse_args()
    dev = torch.device("cuda", 0)
    model = GPT(**GPT2_SMALL).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    params = opt.param_groups[0]["params"]
    names = {id(p): n for n, p in model.named_parameters()}
    fwd = torch.compile(model) if a.compile else model
    x = torch.randint(0, GPT2_SMALL["vocab"], (8, GPT2_SMALL["seq"] + 1), device=dev)
    res = {"lc1": [], "lc2": [], "lc_synced": [], "lc_after_opt": []}
    slow = {}
    for s in range(a.steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        res["lc1"].append(listcomp(params))
        if s % 2:
            pp = per_param(params)
            for p, t in zip(params, pp):
                slow.setdefault(names[id(p)], []).append(t)
        res["lc2"].append(listcomp(params))
        if s == 0:
            g = params[1].grad
            print("grad is view", g._is_view(), "grad_fn", g.grad_fn, "requires_grad", g.requires_grad, flush=True)
        torch.cuda.synchronize()
        res["lc_synced"].append(listcomp(params))
        opt.step()
        res["lc_after_opt"].append(listcomp(params))
        opt.zero_grad(set_to_none=True)
    print({k: round(statistics.median(v[5:]) * 1e6, 1) for k, v in res.items()})
    ranked = sorted(((statistics.median(v) * 1e6, n) for n, v in slow.items()), reverse=True)
    print("slowest", [(round(t, 2), n) for t, n in ranked[:8]])
    print("fastest", [(round(t, 2), n) for t, n in ranked[-4:]])


if __name__ == "__main__":
    main()
