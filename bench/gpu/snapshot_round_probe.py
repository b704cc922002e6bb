"""What an in-memory snapshot costs the steps around it in a launch-bound loop: GPT-2 small,
batch 8, bf16, fused AdamW, ``torch.compile`` (default mode), guarded with a snapshot every
``--interval`` healthy steps (not paced), each step's host time (from one step's start to the next
one's) recorded with the snapshots taken. Per offset from a snapshot (0: the step whose
``optimizer_step`` took it) the median excess over the median of the steps at least ``FAR`` steps
from any snapshot, and the take's own host time (``SnapshotStore.take``). ``--client`` runs another
checkout's client (an A/B in one device call).

Usage: python snapshot_round_probe.py --target unix:///tmp/tg.sock --out res.json [--client DIR]
"""
import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
FAR = 6  # steps after a snapshot from which a step counts as untouched by it
OFFSETS = 5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--client", default=os.path.join(HERE, "..", "..", "clients", "python"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--interval", type=int, default=20)
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny model (a smoke test on the CPU)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.client))
    sys.path.insert(0, HERE)
    from trainguard.guard import Guard
    from gpt_model import GPT, GPT2_SMALL, TINY

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    cfg = TINY if a.tiny else GPT2_SMALL
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = GPT(**cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    g = Guard(model, opt, f"snapshot-round-{os.getpid()}", target=a.target, deadline=2.0, device_gate=True,
              autocast_dtype=torch.bfloat16, watch="auto", verdict_lag=1,
              snapshots={"interval": a.interval, "max_overhead": 0.0})
    fwd = model if a.eager else torch.compile(model)  # after the Guard's hooks: traced in
    store_take = g.recovery.store.take if g.recovery.store is not None else None
    takes = []

    def timed_take(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return store_take(*args, **kwargs)
        finally:
            takes.append((time.perf_counter() - t0) * 1e3)
    if store_take is not None:
        g.recovery.store.take = timed_take
    data = [torch.randint(0, cfg["vocab"], (a.batch, cfg["seq"] + 1), device=dev) for _ in range(4)]
    data = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in data]
    starts, taken = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(a.steps + 1):
            starts.append(time.perf_counter())
            before = len(takes)
            x, y = data[i % len(data)]
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = fwd(x, y)
            loss.backward()
            g.step(i, loss)
            g.optimizer_step()
            opt.zero_grad(set_to_none=True)
            taken.append(len(takes) > before)
        if cuda:
            torch.cuda.synchronize()
    g.close()
    host = [(b - s) * 1e3 for s, b in zip(starts, starts[1:])]
    warm = 40  # compiles, the first snapshots and their buffers
    snaps = [i for i in range(warm, len(host)) if taken[i]]
    near = set(j for s in snaps for j in range(s, s + FAR))
    far = [host[i] for i in range(warm, len(host)) if i not in near]
    usual = statistics.median(far)
    excess = {k: statistics.median(host[s + k] - usual for s in snaps if s + k < len(host)) for k in range(OFFSETS)}
    total = [sum(host[s + k] - usual for k in range(FAR) if s + k < len(host)) for s in snaps]
    res = {"client": os.path.abspath(a.client), "compiled": not a.eager, "batch": a.batch, "interval": a.interval,
           "usual_step_host_ms": usual, "snapshots": len(snaps),
           "take_host_ms_median": statistics.median(takes[-len(snaps):]) if snaps else None,
           "excess_ms_by_offset": excess, "excess_ms_per_snapshot_median": statistics.median(total) if total else None,
           "excess_ms_per_snapshot": total, "far_p90_ms": sorted(far)[int(len(far) * 0.9)],
           "gpu": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
                      if k != "excess_ms_per_snapshot"}))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(res, host_ms=host, taken=taken), f, indent=1)


if __name__ == "__main__":
    main()
