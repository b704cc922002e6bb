"""Trainer step overhead of trainguard on a GPU (issue 7): a GPT-2-small-sized LM in plain torch.

Variants, each timed in paired rounds (baseline, variant, baseline: the ratio is the variant's
ms/step over the mean of the two baselines around it; median, min and max over the rounds):

  baseline     fwd/bwd under bf16 autocast, fused AdamW, zero_grad
  tg           trainguard as shipped: per-step report to the real sidecar, per-block provenance
               (auto watch: emb, h.0..h.11, head = 14 modules), device gate, verdict_lag=1
  tg_nolag     the same with verdict_lag=None (never waits for the previous step's verdict)
  tg_lag2      the same with verdict_lag=2 (step k waits for the verdict of step k-2)
  tg_all       trainguard with every module hooked
  tg_wrap      trainguard through the optimizer wrapper: guard.step(step, loss); opt.step() on guard.wrap(opt)
  tg_bwd       trainguard measured and gated when backward ends (Guard.gate_on_backward)
  tg_nowatch   trainguard without module watch hooks (watch=[]): what the per-block provenance costs
  tg_nosnap    trainguard with in-memory snapshots off: what the snapshots cost
  tg_si        the interpreter's thread switch interval at 0.5 ms instead of 5 ms in its rounds
  tg_inproc    report_process=False: ReportStep called by the sender thread, not the report process
  tg_host      trainguard with device_gate=False: the host path (one device read per step), as every
               run with a non-fused optimizer or protect_update takes it
  naive        clip_grad_norm_(1.0) + one .item() host sync per step
  scaler       fp16 autocast + GradScaler (fused AdamW: GradScaler gates on the device)
  tg_scaler    trainguard on the same fp16 + GradScaler loop (the gate's skip ORed into the scaler's
               found_inf); compare it with `scaler`, not with the bf16 baseline (tg_scaler_over_scaler)
  anomaly      torch.autograd.detect_anomaly() (fewer steps: it is ~5x slower)
  tg_gradscale diagnostic: the clip divisor handed to the fused optimizer as grad_scale (before the
               sixth pass's change): its kernel then writes every gradient back, every step
  tg_mute      diagnostic: verdict_lag=None and no report at all: the training thread's own part
  control      no guard: the baseline's loop timed as a variant (with --compile on its own compiled copy),
               an A/A run whose spread is the method's noise, the yardstick for a variant's worst round
  d2h          diagnostic: control plus, every D2H_EVERY steps, a snapshot's device copies alone (on the
               training stream, then to pinned host memory on a side stream), none of its host-side take

Options that change every variant alike:
  --host-sync  one host read of the loss after backward, as the Hugging Face Trainer does every step
               (its logging_nan_inf_filter): the GPU then drains each step, and whatever CPU work a
               guard does before the next launches lies on the critical path instead of being hidden
  --compile    torch.compile: the baseline is one compiled copy of the model; each guarded variant
               gets its own copy (same initial weights, its own fused AdamW), hooked by its Guard and
               then compiled, so no variant's hooks change another's graph; --compile-mode: its mode
  --gc-freeze  after the warm-up: gc.collect(), then gc.freeze(), so that the full collection
               torch.compile's objects leave pending (765 ms in results/2026-11-30-s16-compile-b8-knobs.json)
               is not paid inside a round by whichever variant allocates first (long runs often time the
               collector themselves, e.g. Megatron-LM's --manual-gc)
  --profile    after the rounds, cProfile 30 steps of the first guarded variant (top functions by
               own time into <out>.profile.txt)
Each guarded variant also records guard_cpu_us: the mean wall time of its per-step client calls
(guard.step + the optimizer step through the guard), next to baseline_optimizer_us (the unguarded
optimizer.step() call); guard_thread_cpu_us: the training thread's CPU time in those calls (not
counting waits for the GIL or a verdict), next to baseline_optimizer_thread_cpu_us; and
guard_parts_us: the wall time split over the client's pieces.

Usage: python overhead.py --target unix:///tmp/tg.sock --batch 8 16 --rounds 7 --steps 30 --out res.json
       python overhead.py --device cpu --tiny ...   (a smoke test of the script, no timing value)
"""
import argparse
import copy
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from trainguard.guard import Guard  # noqa: E402
from gpt_model import GPT, GPT2_SMALL, TINY  # noqa: E402
from overhead_probes import GcClock, PieceClock, SnapshotCopies, mute, sanity  # noqa: E402
from overhead_report import host_steps, print_round, print_summary, snapshots_taken  # noqa: E402
from trainguard import grad_table  # noqa: E402


VARIANTS = ("tg", "tg_nolag", "tg_lag2", "tg_si", "tg_all", "tg_wrap", "tg_bwd", "tg_nowatch", "tg_nosnap", "tg_inproc",
            "tg_host", "naive", "scaler", "tg_scaler", "anomaly", "tg_gradscale", "tg_mute", "control", "d2h")
D2H_EVERY = 50  # steps between two copies of the d2h variant (a snapshot is due at most every ~50: known-good)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--anomaly-steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--variants", default="tg,tg_nolag,tg_all,naive,scaler,anomaly")  # any of VARIANTS
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--host-sync", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default=None, help="torch.compile's mode, e.g. reduce-overhead")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--gc-freeze", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    cfg = TINY if a.tiny else GPT2_SMALL
    variants = a.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:  # an unknown tg_* name would otherwise run as plain tg under its own label
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if cuda else platform.processor(), "config": cfg,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rounds": a.rounds, "steps": a.steps,
            "anomaly_steps": a.anomaly_steps, "host_sync": a.host_sync, "compile": a.compile,
            "compile_mode": a.compile_mode, "results": {}}
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    gc_clock = GcClock()
    # where guard_cpu_us goes: the client's per-step pieces, two of them inside the graph path
    # (class-level: wrapped once for all batch sizes)
    clock = PieceClock()
    clock.wrap_class(grad_table.GradTable, "upload", "mg_upload")
    clock.wrap_class(torch.cuda.CUDAGraph, "replay", "mg_replay")
    for B in a.batch:
        torch.manual_seed(0)
        model = GPT(**cfg).to(dev)
        nparams = sum(p.numel() for p in model.parameters())
        info["parameters"] = nparams
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
        copies = {}  # --compile: variant -> (its own model copy, its optimizer)
        base_fwd = torch.compile(model, mode=a.compile_mode) if a.compile else model

        def pair(name):
            """The model (callable) and optimizer a variant steps."""
            if not a.compile or not (name.startswith("tg") or name in ("control", "d2h")):
                return base_fwd, opt
            if name not in copies:
                m = copy.deepcopy(model)
                copies[name] = [m, torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.1, fused=True),
                                # a guarded copy compiles once hooked
                                torch.compile(m, mode=a.compile_mode) if name in ("control", "d2h") else None]
            m = copies[name]
            return (m[2] if m[2] is not None else m[0]), m[1]
        seq, vocab = cfg["seq"], cfg["vocab"]
        data = [torch.randint(0, vocab, (B, seq + 1), device=dev) for _ in range(4)]
        data = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in data]
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        gate = "auto" if cuda else True
        all_modules = [n for n, _ in model.named_modules() if n]
        guards = {}
        step_no = {"d2h": 0}
        copier = SnapshotCopies(dev)  # d2h

        def guard(name):
            if name not in guards:
                kw = dict(watch="auto", verdict_lag=1)
                if name == "tg_all":
                    kw["watch"] = all_modules
                if name in ("tg_nolag", "tg_mute"):
                    kw["verdict_lag"] = None
                if name == "tg_lag2":
                    kw["verdict_lag"] = 2
                if name == "tg_nowatch":
                    kw["watch"] = []
                if name == "tg_nosnap":
                    kw["snapshots"] = False
                if name == "tg_inproc":  # the ReportStep call made by the sender thread, not a child process
                    kw["report_process"] = False
                if name == "tg_scaler":
                    kw["scaler"] = tg_scaler
                pair(name)
                m, o = (copies[name][0], copies[name][1]) if a.compile else (model, opt)
                g = Guard(m, o, f"bench-{name}-b{B}-{os.getpid()}", target=a.target, deadline=2.0,
                          device_gate=False if name == "tg_host" else gate,
                          autocast_dtype=torch.float16 if name == "tg_scaler" else torch.bfloat16, **kw)
                if name != "tg_host" and not g.device_gate:
                    raise SystemExit(f"{name}: device gate is off")
                if name == "tg_mute":
                    mute(g)
                if name == "tg_gradscale":
                    g.gated.graphs._capture_divide = lambda *args: None
                clock.attach(g)
                if a.compile:
                    copies[name][2] = torch.compile(m, mode=a.compile_mode)  # after the Guard's hooks: traced in
                else:
                    g.pause()
                guards[name], step_no[name] = g, 0
            return guards[name]

        guard_s = {}  # variant -> [seconds in guard calls, steps]
        gc_s = {}  # variant -> [collections gen 0..2, ms gen 0..2, steps]
        last_gc_ms = {}  # variant -> ms in the collector during its last run
        last_launch_ms = {}  # variant -> ms/step until its last run's launches returned (before the sync)
        last_host = {}  # variant -> its last run's slowest host step, and the snapshots taken in it

        scaler = torch.amp.GradScaler(dev.type) if "scaler" in variants else None
        tg_scaler = torch.amp.GradScaler(dev.type) if "tg_scaler" in variants else None

        def run(name, n):
            """n steps of variant `name`; returns ms/step (synchronized before reading the clock)."""
            g = guard(name) if name.startswith("tg") else None
            fwd, o = pair(name)
            if g is not None and not a.compile:
                g.resume()
            in_guard = in_guard_cpu = 0.0
            sender_clock = time.pthread_getcpuclockid(g.sender._thread.ident) if g is not None else None
            sender0 = time.clock_gettime(sender_clock) if sender_clock is not None else 0.0
            gc0 = gc_clock.read()
            clock.key = name if g is not None else None
            switch_interval = sys.getswitchinterval()
            if name == "tg_si":
                sys.setswitchinterval(0.0005)
            taken0 = snapshots_taken(g)
            sync()
            t0 = time.perf_counter()
            starts = []  # each step's host start: a round's slow step shows where the host stalled
            for i in range(n):
                starts.append(time.perf_counter())
                clock.step = i
                x, y = data[i % len(data)]
                if name == "scaler":
                    with torch.autocast(dev.type, dtype=torch.float16):
                        loss = fwd(x, y)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
                    continue
                if name == "tg_scaler":
                    with torch.autocast(dev.type, dtype=torch.float16):
                        loss = fwd(x, y)
                    tg_scaler.scale(loss).backward()
                    tg0 = time.perf_counter()
                    g.step(step_no[name], loss)
                    step_no[name] += 1
                    g.optimizer_step()  # scaler.step + update through the guard
                    in_guard += time.perf_counter() - tg0
                    o.zero_grad(set_to_none=True)
                    continue
                if name == "anomaly":
                    with torch.autograd.detect_anomaly(check_nan=True):
                        with torch.autocast(dev.type, dtype=torch.bfloat16):
                            loss = fwd(x, y)
                        loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    continue
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    loss = fwd(x, y)
                if name == "tg_bwd":  # measured and gated when backward ends (Guard.gate_on_backward)
                    g.gate_on_backward(loss)
                loss.backward()
                if a.host_sync and bool(torch.isnan(loss)):  # what HF's logging_nan_inf_filter reads
                    pass
                if g is not None and name == "tg_wrap":
                    tg0, tc0 = time.perf_counter(), time.thread_time()
                    g.step(step_no[name], loss)
                    step_no[name] += 1
                    g.wrap(o).step()
                    in_guard += time.perf_counter() - tg0
                    in_guard_cpu += time.thread_time() - tc0
                elif g is not None:
                    tg0, tc0 = time.perf_counter(), time.thread_time()
                    g.step(step_no[name], loss)
                    step_no[name] += 1
                    g.optimizer_step()
                    in_guard += time.perf_counter() - tg0
                    in_guard_cpu += time.thread_time() - tc0
                elif name == "naive":
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                    if not math.isfinite(norm.item()):  # the one host sync
                        opt.zero_grad(set_to_none=True)
                        continue
                    opt.step()
                else:
                    tb0, tc0 = time.perf_counter(), time.thread_time()
                    o.step()
                    in_guard += time.perf_counter() - tb0  # the baseline's own optimizer call, to compare
                    in_guard_cpu += time.thread_time() - tc0
                    if name == "d2h":
                        step_no[name] += 1
                        if step_no[name] % D2H_EVERY == 0 and cuda:
                            copier.copy(*copies[name][:2] if a.compile else (model, opt))
                o.zero_grad(set_to_none=True)
            launched = time.perf_counter()
            clock.step = None
            sync()
            dt = (time.perf_counter() - t0) * 1000.0 / n
            sys.setswitchinterval(switch_interval)
            # the host's share: launching n steps against all n run (a host-bound loop has launch ~ dt)
            last_launch_ms[name] = (launched - t0) * 1000.0 / n
            last_host[name] = host_steps(starts, launched, snapshots_taken(g) - taken0)
            gc_delta = [b - a for a, b in zip(gc0, gc_clock.read())]
            acc_gc = gc_s.setdefault(name, [0] * 6 + [0])
            acc_gc[:] = [x + d for x, d in zip(acc_gc, gc_delta + [n])]
            last_gc_ms[name] = sum(gc_delta[3:])
            if g is not None or name == "baseline":
                acc = guard_s.setdefault(name, [0.0, 0, 0.0, 0.0])
                acc[0] += in_guard
                acc[1] += n
                acc[3] += in_guard_cpu
                if sender_clock is not None:  # the report thread's CPU: in a launch-bound loop it competes for the GIL
                    acc[2] += time.clock_gettime(sender_clock) - sender0
            if g is not None:
                if a.compile:
                    g.flush(10)
                else:
                    g.pause()  # flushes the reports, removes hooks and the optimizer gate
            return dt

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in ["baseline"] + variants:
                run(name, a.anomaly_steps if name == "anomaly" else a.warmup)
            clock.clear()  # the per-piece split is of the rounds, not of compiles and captures
            if a.gc_freeze:  # the full collection torch.compile leaves pending, paid here, once, for all variants
                gc.collect()
                gc.freeze()
            guard_s.clear()
            gc_s.clear()
            rows = {v: [] for v in variants}
            base_ms = []
            for r in range(a.rounds):
                before = run("baseline", a.steps)
                base_ms.append(before)
                order = variants[r % len(variants):] + variants[:r % len(variants)]  # rotate the order
                for v in order:
                    t = run(v, a.anomaly_steps if v == "anomaly" else a.steps)
                    after = run("baseline", a.steps)
                    base_ms.append(after)
                    rows[v].append({"ms": t, "base_before": before, "base_after": after,
                                    "ratio": t / ((before + after) / 2), "gc_ms": last_gc_ms[v],
                                    "launch_ms": last_launch_ms[v], "base_launch_ms": last_launch_ms["baseline"],
                                    "base_after_gc_ms": last_gc_ms["baseline"], **last_host[v]})
                    before = after
                print_round(B, r, a.rounds, rows, variants)

        res = {"baseline_ms_median": statistics.median(base_ms), "baseline_ms_min": min(base_ms),
               "baseline_ms_max": max(base_ms), "variants": {},
               "baseline_optimizer_us": guard_s["baseline"][0] / guard_s["baseline"][1] * 1e6,
               "baseline_optimizer_thread_cpu_us": guard_s["baseline"][3] / guard_s["baseline"][1] * 1e6}
        res["gc_per_step"] = {k: {"collections": [c / x[6] for c in x[:3]], "ms": [m / x[6] for m in x[3:6]]}
                              for k, x in gc_s.items()}  # generations 0, 1, 2
        for v in variants:
            rs = [x["ratio"] for x in rows[v]]
            res["variants"][v] = {"median": statistics.median(rs), "min": min(rs), "max": max(rs),
                                  "ms_median": statistics.median(x["ms"] for x in rows[v]),
                                  "launch_ms_median": statistics.median(x["launch_ms"] for x in rows[v]),
                                  "base_launch_ms_median": statistics.median(x["base_launch_ms"] for x in rows[v]),
                                  "rounds": rows[v]}
            if v in guard_s and guard_s[v][1]:
                res["variants"][v]["guard_cpu_us"] = guard_s[v][0] / guard_s[v][1] * 1e6
                res["variants"][v]["sender_cpu_us"] = guard_s[v][2] / guard_s[v][1] * 1e6
                res["variants"][v]["guard_thread_cpu_us"] = guard_s[v][3] / guard_s[v][1] * 1e6
                res["variants"][v]["guard_parts_us"] = clock.per_step_us(v, guard_s[v][1])
                res["variants"][v]["guard_parts_spread"] = clock.spread(v)
            if v in guards:
                res["variants"][v]["measured_at_backward"] = dict(guards[v].backward_gate.counters)
        if "tg_scaler" in variants and "scaler" in variants:  # the fp16 loop's own baseline
            res["tg_scaler_over_scaler"] = res["variants"]["tg_scaler"]["ms_median"] / res["variants"]["scaler"]["ms_median"]
            print(f"  tg_scaler / scaler (ms medians): {res['tg_scaler_over_scaler']:.3f}")
        guarded = [v for v in variants if v.startswith("tg")]
        if a.profile and guarded and a.out:
            prof = cProfile.Profile()
            prof.enable()
            run(guarded[0], a.steps)
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(40)
            with open(f"{a.out}.profile.txt", "a") as f:
                f.write(f"# batch {B}, variant {guarded[0]}, {a.steps} steps, host_sync={a.host_sync}, "
                        f"compile={a.compile}\n{buf.getvalue()}\n")
        # Sanity of the guarded path on this device: no host sync, NaN gated, counters.
        if "tg" in variants and not a.compile:
            res["sanity"] = sanity(model, opt, guard("tg"), data, dev, step_no)
            res["counters"] = {k: dict(g.counters) for k, g in guards.items()}
        res["gate_graph"] = {k: dict(g.gated.graphs.counters, address_uploads=g.gated.graphs.address_uploads)
                             for k, g in guards.items()}
        print("  gate graph (captures/replays/eager):", res["gate_graph"])
        for g in guards.values():
            g.close()
        info["results"][f"batch{B}"] = res
        print_summary(B, nparams, res, variants)
        if a.compile:
            from torch._dynamo.utils import counters
            res["graph_breaks"] = {str(k): n for k, n in counters["graph_break"].items()}
            print("  graph breaks:", sum(res["graph_breaks"].values()), list(res["graph_breaks"])[:4])
        if "sanity" in res:
            print("  sanity:", json.dumps(res["sanity"]))
        del model, opt, data, guards, copies, base_fwd
        if cuda:
            torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
