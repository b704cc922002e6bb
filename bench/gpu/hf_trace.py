"""Where the HF Trainer's guarded step spends its extra time (issue 21): kernels or an idle GPU.

One Trainer (the model and arguments of frameworks.py). After the warm-up the guard is paused for
``--steps`` steps, then resumed for as many, all under torch.profiler. Each step is a named range
from one ``on_step_begin`` to the next. For each step it reports:
- its wall time;
- the GPU's busy time: the union of the CUDA kernels, copies and sets that ran inside the range;
- the GPU's idle time: the rest;
- the CUDA runtime calls the host made (launches, copies, syncs) and the aten ops it ran.

The guarded steps are compared with the unguarded ones:
- extra idle time: the host is on the critical path (after the Trainer's loss read);
- extra busy time: the guard's kernels, listed by name.

Usage (GPU machine, after ``source bench/gpu/sidecar-up.sh``):
    python3 bench/gpu/hf_trace.py --batch 8 --steps 20 --out res.json [--chrome trace.json]
"""
import argparse
import bisect
import collections
import json
import os
import re
import statistics
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile, record_function

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from frameworks import hf_train, token_batches  # noqa: E402  (also puts the client on sys.path)
from gpt_model import GPT2_SMALL  # noqa: E402

STEP = re.compile(r"^(paused|guarded)-(\d+)$")


class Phases:
    """Pauses the guard for ``n`` steps after ``warmup``, resumes it for ``n``, profiles both and
    names every profiled step (a CPU range per step)."""

    def __init__(self, warmup, n, prof):
        self.warmup, self.n, self.prof = warmup, n, prof
        self.k, self.range, self.callback = -warmup, None, None

    def on_step_begin(self):
        if self.range is not None:
            self.range.__exit__(None, None, None)
            self.range = None
        k, guard = self.k, self.callback.guard
        if k == 0:
            guard.pause()  # flushes: outside every profiled step
            self.prof.start()
        elif k == self.n:
            guard.resume()
        elif k == 2 * self.n:
            self.prof.stop()
        if 0 <= k < 2 * self.n:
            self.range = record_function(f"{'paused' if k < self.n else 'guarded'}-{k}")
            self.range.__enter__()
        self.k += 1


def union(intervals):
    """Sorted, merged [start, end) intervals."""
    out = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def covered(merged, starts, a, b):
    """Nanoseconds of [a, b) covered by the merged intervals (``starts``: their starts)."""
    total, i = 0, max(0, bisect.bisect_right(starts, a) - 1)
    while i < len(merged) and merged[i][0] < b:
        lo, hi = max(a, merged[i][0]), min(b, merged[i][1])
        total += max(0, hi - lo)
        i += 1
    return total


def analyse(events):
    """Per step: wall, GPU busy and idle (ms); per phase: GPU time by kernel name and runtime calls."""
    steps, gpu, calls = [], [], []
    for e in events:
        start, end = e.start_ns(), e.start_ns() + e.duration_ns()
        if e.device_type() == torch.autograd.DeviceType.CUDA:
            # record_function ranges (the steps, "Optimizer.step#AdamW.step") are mirrored on the GPU
            # timeline: spans, not work
            if not STEP.match(e.name()) and not (hasattr(e, "is_user_annotation") and e.is_user_annotation()):
                gpu.append((start, end, e.name()))
        elif STEP.match(e.name()):
            steps.append((e.name(), start, end))
        elif e.name().startswith(("cuda", "aten::")):  # runtime calls (cudaLaunchKernel, cudaMemcpyAsync...), ops
            calls.append((start, e.name()))
    merged = union([(a, b) for a, b, _ in gpu])
    starts = [m[0] for m in merged]
    gpu.sort()
    gpu_starts = [g[0] for g in gpu]
    calls.sort()
    call_starts = [c[0] for c in calls]
    rows, kernels, runtime = [], collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for name, a, b in sorted(steps, key=lambda s: s[1]):
        phase = STEP.match(name).group(1)
        busy = covered(merged, starts, a, b)
        rows.append({"step": name, "phase": phase, "wall_ms": (b - a) / 1e6, "gpu_busy_ms": busy / 1e6,
                     "gpu_idle_ms": (b - a - busy) / 1e6})
        for s, e, kname in gpu[bisect.bisect_left(gpu_starts, a):bisect.bisect_left(gpu_starts, b)]:
            kernels[phase][kname] += (min(e, b) - s) / 1e6
        for _, cname in calls[bisect.bisect_left(call_starts, a):bisect.bisect_left(call_starts, b)]:
            runtime[phase][cname] += 1
    return rows, kernels, runtime


def summary(rows, kernels, runtime):
    per = {}
    for phase in ("paused", "guarded"):
        r = [x for x in rows if x["phase"] == phase]
        per[phase] = {k: statistics.median(x[k] for x in r) for k in ("wall_ms", "gpu_busy_ms", "gpu_idle_ms")}
        per[phase]["steps"] = len(r)
    n = {p: max(1, per[p]["steps"]) for p in per}
    delta = {k: per["guarded"][k] - per["paused"][k] for k in ("wall_ms", "gpu_busy_ms", "gpu_idle_ms")}
    names = set(kernels["guarded"]) | set(kernels["paused"])
    added = sorted(((kernels["guarded"][k] / n["guarded"] - kernels["paused"][k] / n["paused"]) * 1000, k)
                   for k in names)
    calls = {c: runtime["guarded"][c] / n["guarded"] - runtime["paused"][c] / n["paused"]
             for c in set(runtime["guarded"]) | set(runtime["paused"])}
    ops = {c: v for c, v in calls.items() if c.startswith("aten::")}
    calls = {c: v for c, v in calls.items() if not c.startswith("aten::")}
    return {"median": per, "guarded_minus_paused_ms": delta,
            "kernels_added_us_per_step": [{"kernel": k[:160], "us": round(us, 1)} for us, k in added[::-1][:15]],
            "runtime_calls_added_per_step": {c: round(v, 1) for c, v in sorted(calls.items(), key=lambda x: -x[1])
                                              if abs(v) >= 0.5},
            "aten_ops_added_per_step": {c: round(v, 1) for c, v in sorted(ops.items(), key=lambda x: -x[1])
                                        if abs(v) >= 0.5}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="profiled steps per phase")
    ap.add_argument("--warmup", type=int, default=12)
    ap.add_argument("--out", default=None)
    ap.add_argument("--chrome", default=None, help="also export the profiler's Chrome trace here")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = GPT2_SMALL
    data = token_batches(cfg, a.batch)
    import transformers
    from trainguard.hf import TrainguardCallback
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    phases = Phases(a.warmup, a.steps, prof)
    tg = TrainguardCallback(f"hf-trace-b{a.batch}-{os.getpid()}", target=a.target, deadline=2.0,
                            autocast_dtype=torch.bfloat16)
    phases.callback = tg

    class Marks(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            phases.on_step_begin()

    hf_train(cfg, a.batch, data, f"/tmp/hf-trace-{a.batch}", a.warmup + 2 * a.steps + 1, [tg, Marks()], repeat=1000)
    rows, kernels, runtime = analyse(prof.profiler.kineto_results.events())
    res = {"batch": a.batch, "steps_per_phase": a.steps, "gpu": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "summary": summary(rows, kernels, runtime), "steps": rows,
           "measured_at_backward": dict(tg.guard.backward_gate.counters)}
    print(json.dumps(res["summary"], indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    if a.chrome:
        prof.export_chrome_trace(a.chrome)


if __name__ == "__main__":
    main()
