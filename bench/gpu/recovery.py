"""Cost of recovery on a GPU (issue 16): in-memory snapshots and fault replay, GPT-2 small.

Paired rounds (baseline, variant, baseline; the ratio is the variant's ms/step over the mean of the
baselines around it; median/min/max over rounds), all on one model and one fused AdamW:

  baseline    bf16 autocast fwd/bwd, fused AdamW, no guard
  tg_off      trainguard (device gate), snapshots=False, replay=False
  tg_on       trainguard with snapshots every --interval healthy steps and replay on (the loop
              passes replay=fn): the healthy-step overhead of both features (target <= 1.02x)
  snap_every  snapshots every step: the cost one snapshot adds to its step

Then, outside the timed rounds: the host time of one SnapshotStore.take (the copy is async),
the time until the copy has landed, the snapshot's bytes; and one replay's cost: a step whose
forward yields a NaN once, on the host path (device_gate=False), next to a clean host-path step,
and on the device gate (the fault replayed inside the next step's guard.step), next to a clean
gated step.

Usage: python recovery.py --target unix:///tmp/tg.sock --batch 8 --rounds 5 --steps 50 --out res.json
       python recovery.py --device cpu --tiny ...   (a smoke test of the script, no timing value)
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
sys.path.insert(0, HERE)
from gpt_model import GPT, GPT2_SMALL, TINY  # noqa: E402
from trainguard.guard import Guard  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--interval", type=int, default=25)
    ap.add_argument("--known-good", type=int, default=25)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    cfg = TINY if a.tiny else GPT2_SMALL
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = GPT(**cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    B, seq, vocab = a.batch, cfg["seq"], cfg["vocab"]
    data = [torch.randint(0, vocab, (B, seq + 1), device=dev) for _ in range(4)]
    data = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in data]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    policy = {"known_good_healthy_steps": a.known_good}
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if cuda else platform.processor(), "config": cfg, "batch": B,
            "parameters": sum(p.numel() for p in model.parameters()), "interval": a.interval,
            "known_good": a.known_good, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rounds": a.rounds,
            "steps": a.steps}
    kw = dict(target=a.target, deadline=2.0, device_gate="auto" if cuda else True, autocast_dtype=torch.bfloat16,
              policy=policy)
    guards = {
        "tg_off": Guard(model, opt, f"rec-off-{os.getpid()}", snapshots=False, replay=False, **kw),
        "tg_on": Guard(model, opt, f"rec-on-{os.getpid()}", snapshots={"interval": a.interval}, **kw),
        "snap_every": Guard(model, opt, f"rec-every-{os.getpid()}", snapshots={"interval": 1, "max_overhead": 0},
                            replay=False, **dict(kw, policy={"known_good_healthy_steps": 0})),
    }
    for g in guards.values():
        g.pause()
    step_no = {k: 0 for k in guards}

    def one(g, name, x, y, poison=False):
        def fwd_bwd():
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = model(x, y)
            loss.backward()
            return loss
        h = model.h[len(model.h) // 2].register_forward_hook(lambda m, i, o: o * float("nan")) if poison else None
        loss = fwd_bwd()
        if h is not None:
            h.remove()
        v = g.step(step_no[name], loss, replay=fwd_bwd if name in ("tg_on", "host", "gated") else None)
        step_no[name] += 1
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        return v

    def run(name, n):
        g = guards.get(name)
        if g is not None:
            g.resume()
        sync()
        t0 = time.perf_counter()
        for i in range(n):
            x, y = data[i % len(data)]
            if g is None:
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    loss = model(x, y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                one(g, name, x, y)
        sync()
        dt = (time.perf_counter() - t0) * 1000.0 / n
        if g is not None:
            g.pause()
        return dt

    variants = ["tg_off", "tg_on", "snap_every"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ["baseline"] + variants:
            run(name, 8)
        rows = {v: [] for v in variants}
        for r in range(a.rounds):
            before = run("baseline", a.steps)
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                t = run(v, a.steps)
                after = run("baseline", a.steps)
                rows[v].append({"ms": t, "ratio": t / ((before + after) / 2), "base": (before + after) / 2})
                before = after
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{v} {rows[v][-1]['ratio']:.4f}" for v in variants), flush=True)
        res = {}
        for v in variants:
            rs = [x["ratio"] for x in rows[v]]
            res[v] = {"median": statistics.median(rs), "min": min(rs), "max": max(rs),
                      "ms_median": statistics.median(x["ms"] for x in rows[v]), "rounds": rows[v]}
        on_vs_off = [x["ms"] / y["ms"] for x, y in zip(rows["tg_on"], rows["tg_off"])]
        res["tg_on_over_tg_off_median"] = statistics.median(on_vs_off)
        base = statistics.median(x["base"] for x in rows["tg_off"])
        res["baseline_ms_median"] = base
        res["snapshot_cost_on_its_step_ms"] = res["snap_every"]["ms_median"] - res["tg_off"]["ms_median"]
        res["snapshot_cost_per_step_at_interval_ms"] = res["snapshot_cost_on_its_step_ms"] / a.interval

        # One snapshot, directly: host time of take() and time until the copy landed.
        store = guards["tg_on"].recovery.store
        takes = []
        for i in range(5):
            sync()
            t0 = time.perf_counter()
            s = store.take(i % 2, 10**6 + i, 0)
            t1 = time.perf_counter()
            if s.event is not None:
                s.event.synchronize()
            t2 = time.perf_counter()
            takes.append({"host_ms": (t1 - t0) * 1000, "landed_ms": (t2 - t0) * 1000})
            s.state = "EMPTY"
        res["snapshot_take"] = {"bytes": store.stats["bytes"],
                                "host_ms_median": statistics.median(x["host_ms"] for x in takes),
                                "landed_ms_median": statistics.median(x["landed_ms"] for x in takes),
                                "pinned": bool(store.slots[0].host[0].is_pinned()) if cuda else False}

        # One replay, on the host path: a NaN step (replayed, TRANSIENT) next to clean steps.
        host = Guard(model, opt, f"rec-host-{os.getpid()}", device_gate=False,
                     snapshots=False, **{k: v for k, v in kw.items() if k != "device_gate"})
        step_no["host"] = 0
        guards["host"] = host
        clean, faulty, classes = [], [], []
        for i in range(12):
            x, y = data[i % len(data)]
            sync()
            t0 = time.perf_counter()
            v = one(host, "host", x, y, poison=(i % 3 == 2))
            sync()
            (faulty if i % 3 == 2 else clean).append((time.perf_counter() - t0) * 1000)
            if i % 3 == 2:
                classes.append(v.fault_class)
        res["replay"] = {"clean_host_step_ms_median": statistics.median(clean[2:]),
                         "faulty_step_with_replay_ms_median": statistics.median(faulty),
                         "classes": classes, "replays": host.recovery.counters["replays"]}
        if cuda or a.tiny:  # (the CPU smoke forces the gate on)
            # One replay on the device gate: step k's fault is seen one step later, so it is replayed
            # inside step k+1's guard.step() (the step after the poisoned one carries its cost).
            gated = Guard(model, opt, f"rec-gated-{os.getpid()}", snapshots=False, **kw)
            step_no["gated"] = 0
            guards["gated"] = gated
            clean, after_fault, classes, pending = [], [], [], None
            for i in range(12):  # 4 faults: the default replay budget (4 per 1000 steps)
                x, y = data[i % len(data)]
                sync()
                t0 = time.perf_counter()
                v = one(gated, "gated", x, y, poison=(i % 3 == 1))
                sync()
                dt = (time.perf_counter() - t0) * 1000
                if i % 3 == 2:
                    after_fault.append(dt)
                    classes.append(pending.fault_class)
                elif i % 3 == 0 and i >= 3:
                    clean.append(dt)
                pending = v
            res["replay_gated"] = {"clean_gated_step_ms_median": statistics.median(clean),
                                   "step_after_fault_with_replay_ms_median": statistics.median(after_fault),
                                   "classes": classes, "replays": gated.recovery.counters["replays"]}
        res["counters"] = {k: dict(g.recovery.counters) for k, g in guards.items()}
    for g in guards.values():
        g.close()
    info["results"] = res
    print(json.dumps({k: v for k, v in res.items() if k not in ("tg_off", "tg_on", "snap_every")}, indent=1))
    for v in variants:
        s = res[v]
        print(f"  {v:10s} x{s['median']:.4f} [{s['min']:.4f}, {s['max']:.4f}]  {s['ms_median']:.2f} ms/step")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
