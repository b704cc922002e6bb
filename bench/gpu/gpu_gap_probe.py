"""Where a guarded compiled step loses GPU time: the GPU timeline alone (CUDA activity only, so the
host keeps the slack it has unprofiled), of an unguarded and a guarded copy of overhead.py's model,
alternating blocks of ``--block`` steps. Per block: wall, GPU busy (union of kernels and copies),
GPU idle; and the idle gaps over 20 us, summed by what ran before and after them, so a bubble the
guard causes shows by name.

Usage (GPU machine, after ``source bench/gpu/sidecar-up.sh``):
    python3 bench/gpu/gpu_gap_probe.py --batch 8 --block 20 --blocks 6 --out gaps.json
"""
import argparse
import copy
import json
import os
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
sys.path.insert(0, HERE)
from gpt_model import GPT, GPT2_SMALL  # noqa: E402
from trainguard.guard import Guard  # noqa: E402

MARK = "spin_kernel"  # torch.cuda._sleep's kernel: the delimiter between blocks


def short(name):
    return name.split("(")[0].split("<")[0][:60]


def blocks_of(events):
    """The GPU events (name, start_us, end_us) between consecutive block markers."""
    evs = sorted(((e.name(), e.start_ns() / 1e3, (e.start_ns() + e.duration_ns()) / 1e3) for e in events
                  if e.device_type() == torch.autograd.DeviceType.CUDA), key=lambda x: x[1])
    out, cur = [], None
    for ev in evs:
        if MARK in ev[0]:
            if cur is not None:
                out.append(cur)
            cur = []
        elif cur is not None:
            cur.append(ev)
    return out


def timeline(block, min_gap_us=20.0):
    busy, end, gaps = 0.0, None, {}
    prev = None
    for name, s, e in block:
        if end is None:
            busy += e - s
        else:
            if s > end:
                busy += e - s
                gap = s - end
                if gap >= min_gap_us:
                    key = f"{short(prev)} -> {short(name)}"
                    g = gaps.setdefault(key, [0, 0.0])
                    g[0] += 1
                    g[1] += gap
            elif e > end:
                busy += e - end
        if end is None or e > end:
            end, prev = e, name
    span = (block[-1][2] if block else 0.0) - (block[0][1] if block else 0.0)
    span = max(span, end - block[0][1]) if block else 0.0
    return busy, span, gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--verdict-lag", default="1")
    ap.add_argument("--out")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = GPT(**GPT2_SMALL).to(dev)
    lag = None if a.verdict_lag == "none" else int(a.verdict_lag)
    copies = {}
    for phase in ("unguarded", "guarded"):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
        g = None
        if phase == "guarded":
            g = Guard(m, opt, f"gap-probe-b{a.batch}-{os.getpid()}", target=a.target, deadline=2.0,
                      autocast_dtype=torch.bfloat16, verdict_lag=lag)
        copies[phase] = (torch.compile(m), opt, g)
    data = [torch.randint(0, GPT2_SMALL["vocab"], (a.batch, GPT2_SMALL["seq"] + 1), device=dev) for _ in range(4)]
    data = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in data]
    counter = {"unguarded": 0, "guarded": 0}

    def step(phase):
        fwd, opt, g = copies[phase]
        i = counter[phase]
        counter[phase] += 1
        x, y = data[i % len(data)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x, y)
        loss.backward()
        if g is not None:
            g.step(i, loss)
            g.optimizer_step()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    for phase in ("unguarded", "guarded"):
        for _ in range(a.warmup):
            step(phase)
    torch.cuda.synchronize()
    walls, order = [], []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for b in range(a.blocks):
            for phase in (("unguarded", "guarded") if b % 2 == 0 else ("guarded", "unguarded")):
                torch.cuda._sleep(1000)
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(a.block):
                    step(phase)
                torch.cuda.synchronize()
                walls.append((time.perf_counter() - t) * 1e3 / a.block)
                order.append(phase)
        torch.cuda._sleep(1000)
        torch.cuda.synchronize()
    copies["guarded"][2].close()
    per = {"unguarded": [], "guarded": []}
    gaps = {"unguarded": {}, "guarded": {}}
    for phase, wall, block in zip(order, walls, blocks_of(prof.profiler.kineto_results.events())):
        busy, span, g = timeline(block)
        per[phase].append({"wall_ms": wall, "busy_ms": busy / 1e3 / a.block, "span_ms": span / 1e3 / a.block,
                           "idle_ms": (span - busy) / 1e3 / a.block, "kernels": len(block) / a.block})
        for k, (n, us) in g.items():
            acc = gaps[phase].setdefault(k, [0, 0.0])
            acc[0] += n
            acc[1] += us
    steps = {p: a.block * len(per[p]) for p in per}
    res = {"batch": a.batch, "block": a.block, "blocks": a.blocks, "verdict_lag": lag, "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "blocks_measured": per,
           "median": {p: {k: sorted(r[k] for r in rows)[len(rows) // 2] for k in rows[0]} for p, rows in per.items()},
           "top_gaps_us_per_step": {p: sorted(((k, n / steps[p], us / steps[p]) for k, (n, us) in gs.items()),
                                              key=lambda x: -x[2])[:12] for p, gs in gaps.items()}}
    print(json.dumps({k: res[k] for k in ("median", "top_gaps_us_per_step")}, indent=1), flush=True)
    if a.out:
        with open(os.path.join(os.environ.get("OUT", "."), a.out), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
