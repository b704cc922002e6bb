"""What a compiled model does to the host's Python: the same small C-level loops (148 items, GPT-2
small's parameter count) timed before and after one torch.compile'd training step, and which
threads used the CPU afterwards. Loops that allocate a fresh int per item got 6-13x slower after
compiling; loops that allocate nothing did not (results/2026-11-30-s11-alloc-probe.txt). That is
why GradTable.matches/upload keep nothing they allocate per parameter.

Usage: python alloc_probe.py
"""
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt_model import GPT, GPT2_SMALL, train_compiled  # noqa: E402


def timed(fn, n=200):
    """Microseconds per call, the mean of ``n`` calls."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - t) / n * 1e6, 2)


def probes(tag, opt, ps, ids):
    print(tag, type(ps).__name__, len(opt.param_groups), {
        "param_groups": timed(lambda: opt.param_groups),
        "map_id": timed(lambda: list(map(id, ps))),
        "compare": timed(lambda: list(map(id, ps)) == ids),
        "listcomp_id": timed(lambda: [id(p) for p in ps]),
        "map_len_only": timed(lambda: len(ps)),
        "ints": timed(lambda: list(map(id, range(148)))),
        "hash_params": timed(lambda: list(map(hash, ps))),
    }, flush=True)


def task_cpu():
    """{thread id: (name, CPU ticks)} of this process's threads."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))  # utime + stime
    return out


def main():
    dev = torch.device("cuda", 0)
    model = GPT(**GPT2_SMALL).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    ps = opt.param_groups[0]["params"]
    ids = list(map(id, ps))
    probes("before compile", opt, ps, ids)
    train_compiled(dev, model, opt, steps=1)
    probes("after compile", opt, ps, ids)
    import gc
    print("gc counts", gc.get_count(), "objects", len(gc.get_objects()))
    a = task_cpu()
    time.sleep(2.0)
    b = task_cpu()
    busy = sorted(((b[t][1] - a[t][1], b[t][0], t) for t in b if t in a), reverse=True)[:8]
    print("threads", len(b), "python threads", [t.name for t in threading.enumerate()])
    print("busiest over 2 s (ticks of 10 ms):", busy)
    print("switch interval", sys.getswitchinterval())


if __name__ == "__main__":
    main()
