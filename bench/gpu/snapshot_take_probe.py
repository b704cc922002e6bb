"""Where the host time of one in-memory snapshot goes (``SnapshotStore.take``), GPT-2 small with
fused AdamW: the whole take, its ``_gather`` (state dicts walked, tensors deduplicated) alone, and a
cProfile of a few takes (top functions by own time into ``<out>.profile.txt``).

Usage: [TG_CLIENT=dir] python snapshot_take_probe.py --out res.json [--device cpu --tiny]
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

import torch

# TG_CLIENT: another checkout's client (an A/B in one device call)
sys.path.insert(0, os.environ.get("TG_CLIENT") or
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from trainguard.snapshot import EMPTY, SnapshotPolicy, SnapshotStore  # noqa: E402
from gpt_model import GPT, GPT2_SMALL, TINY  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--takes", type=int, default=7)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    cfg = TINY if a.tiny else GPT2_SMALL
    torch.manual_seed(0)
    model = GPT(**cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=dev.type == "cuda")
    x = torch.randint(0, cfg["vocab"], (2, cfg["seq"] + 1), device=dev)
    model(x[:, :-1], x[:, 1:]).backward()
    opt.step()
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(), device=dev)
    store.prepare()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def one(step):
        sync()
        t0 = time.perf_counter()
        s = store.take(0, step, step + 1)
        host = time.perf_counter() - t0
        sync()
        s.state = EMPTY
        return host

    one(0)
    takes = [one(i) for i in range(1, a.takes + 1)]
    gathers = []
    for _ in range(a.takes):
        t0 = time.perf_counter()
        store._gather()
        gathers.append(time.perf_counter() - t0)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(3):
        one(100 + i)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    _, uniq, _ = store._gather()
    res = {"device": str(dev), "tensors": len(uniq), "bytes": sum(t.numel() * t.element_size() for t in uniq),
           "take_host_ms_median": statistics.median(takes) * 1e3, "take_host_ms": [t * 1e3 for t in takes],
           "gather_ms_median": statistics.median(gathers) * 1e3, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(json.dumps({k: v for k, v in res.items() if k != "take_host_ms"}))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        with open(a.out + ".profile.txt", "w") as f:
            f.write(buf.getvalue())
    else:
        print(buf.getvalue())


if __name__ == "__main__":
    main()
