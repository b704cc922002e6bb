"""Where the HF Trainer's guarded step spends its extra wall time (issue 21), without a profiler.

One Trainer (the model and arguments of frameworks.py), the guard paused and resumed in alternate
blocks of ``--block`` steps (as ``frameworks.py --blocks``). Each step is cut into host segments by
``time.perf_counter()`` marks in callbacks placed before and after trainguard's own, and in forward
hooks; nothing synchronises the device, so the marks fall where the Trainer's host thread is:

- ``forward``:   on_step_begin .. the model's output (batch to device, forward launches)
- ``backward``:  the output .. on_pre_optimizer_step (backward launches, the Trainer's loss read,
                 which waits for the device, and its clip_grad_norm_(inf) launches)
- ``guard``:     trainguard's on_pre_optimizer_step (guard.step)
- ``optimizer``: .. on_optimizer_step (the wrapped optimizer's step)
- ``rest``:      .. the next on_step_begin (scheduler, zero_grad, logging checks, next batch)

Guarded minus paused per segment says whether the cost is host work (guard, optimizer, rest, forward
launches stalled) or device work the loss read waits for (backward).

Usage (GPU machine, after ``source bench/gpu/sidecar-up.sh``):
    python3 bench/gpu/hf_segments.py --batch 8 --block 10 --pairs 20 --out res.json
"""
import argparse
import collections
import cProfile
import io
import pstats
import json
import os
import statistics
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from frameworks import hf_train, token_batches, watched  # noqa: E402  (also puts the client on sys.path)
from gpt_model import GPT2_SMALL  # noqa: E402
from overhead_probes import PieceClock  # noqa: E402

SEGMENTS = ("forward", "backward", "guard", "optimizer", "rest")


class Parts(PieceClock):
    """The client's per-step pieces on the training thread, per phase (``key``: paused | guarded;
    None: warm-up, not counted): what the guard and optimizer segments consist of; and when the
    pieces on the other threads (the sender, autograd's thread at backward end) ran."""

    def install(self, g):
        self.wrap(g.gated, "step", "gated.step")
        self.wrap(g.gated, "await_verdicts", "gated.await_verdicts")
        self.wrap(g.backward_gate, "take", "backward_gate.take")
        self.wrap(g.backward_gate, "_holds", "backward_gate._holds")
        self.wrap(g.backward_gate, "_loop_clip", "backward_gate._loop_clip")
        from trainguard import apply as apply_
        self.wrap(apply_, "clip_gradients", "apply.clip_gradients")  # the clip after the Trainer's
        self.wrap(g.gated.graphs, "measure_and_install", "measure_and_install")
        self.wrap(g.gate, "stage", "gate.stage")
        self.wrap(g.sender, "submit_deferred", "sender.submit_deferred")
        self.wrap(g.recovery, "begin", "recovery.begin")
        self.wrap(g.recovery, "before_update", "recovery.before_update")
        self.wrap(g.recovery, "after_update", "recovery.after_update")
        self.wrap(g, "_verdict_for_update", "guard._verdict_for_update")
        self.wrap(g, "_finish", "guard._finish")
        self.wrap(g.optimizer, "step", "the inner optimizer's step")
        self.wrap(g.gated, "_report", "sender: build the report")
        self.wrap(g.sender, "_on_result", "sender: apply the answer")
        self.wrap(g.sender._transport, "call", "gRPC call")  # the sender's reports; registrations too
        r = g.recovery
        for attr in ("_capture_rng", "_register_ready", "_confirm", "_take", "_register"):
            self.wrap(r, attr, f"recovery.{attr}")
        self.wrap(r.lr, "on_healthy", "recovery.lr.on_healthy")
        if r.ring is not None:
            self.wrap(r.ring, "on_healthy", "recovery.ring.on_healthy")
            self.wrap(r.ring, "due", "recovery.ring.due")

    def per_step_phases(self, steps):
        """phase -> label -> µs per step of the phase (mean), calls, median and longest call (µs).
        ``steps``: phase -> the steps run in it."""
        out = {}
        for phase, parts in self.samples.items():
            rows = sorted(((k, [d for _, d in xs]) for k, xs in parts.items()), key=lambda kv: -sum(kv[1]))
            out[phase] = {k: {"per_step": round(sum(v) * 1e6 / max(1, steps[phase]), 1), "calls": len(v),
                              "median": round(statistics.median(v) * 1e6, 1), "max": round(max(v) * 1e6, 1)}
                          for k, v in rows}
        return out

    def overlap(self, steps):
        """For the pieces on other threads: ms per guarded step that fell in each of the training
        thread's segments (``steps``: (phase, cuts) with absolute times)."""
        ends = [(cuts[0], cuts[-1], phase, cuts) for phase, cuts in steps]
        out = collections.defaultdict(lambda: collections.Counter())
        for label, a, b in self.other:
            for s0, s1, phase, cuts in ends:
                if b <= s0 or a >= s1 or phase != "guarded":
                    continue
                for seg, c0, c1 in zip(SEGMENTS, cuts, cuts[1:]):
                    out[label][seg] += max(0.0, min(b, c1) - max(a, c0))
        n = max(1, sum(1 for phase, _ in steps if phase == "guarded"))
        return {k: {seg: round(v * 1e3 / n, 3) for seg, v in c.items()} for k, c in out.items()}


class Marks:
    """Per-step host timestamps and the paused/guarded schedule."""

    def __init__(self, warmup, block, pairs, profiler=None, parts=None):
        self.warmup, self.block, self.n_blocks = warmup, block, 2 * pairs + 1
        self.parts = parts
        self.k, self.t, self.guard = -warmup, {}, None
        self.profiler = profiler  # cProfile of the guarded blocks (times inflated by it)
        self.rows = collections.defaultdict(list)   # phase -> [{segment: ms}]
        self.cuts = []                               # (phase, the step's absolute marks)
        self.steps_in = collections.Counter()        # phase -> steps run in it (block-first steps too)

    def steps(self):
        return self.warmup + self.block * self.n_blocks

    def mark(self, name):
        self.t[name] = time.perf_counter()

    def step_begin(self):
        now = time.perf_counter()
        t = self.t
        if self.k > 0 and len(t) == 5:
            cuts = [t["begin"], t["output"], t["pre_guard"], t["post_guard"], t["optimized"], now]
            phase = "guarded" if ((self.k - 1) // self.block) % 2 else "paused"
            self.steps_in[phase] += 1
            if (self.k - 1) % self.block:  # the first step of a block pays the pause/resume flush
                self.rows[phase].append({s: (b - a) * 1e3 for s, a, b in zip(SEGMENTS, cuts, cuts[1:])})
                self.cuts.append((phase, cuts))
        if self.k >= 0 and self.k % self.block == 0 and self.k // self.block < self.n_blocks:
            guarded = (self.k // self.block) % 2
            if self.profiler is not None:
                (self.profiler.enable if guarded else self.profiler.disable)()
            if self.parts is not None:
                self.parts.key = "guarded" if guarded else "paused"
            (self.guard.resume if guarded else self.guard.pause)()
        self.t = {}
        self.k += 1
        self.mark("begin")

    def summary(self):
        out = {}
        for phase, rows in self.rows.items():
            out[phase] = {s: statistics.median(r[s] for r in rows) for s in SEGMENTS}
            out[phase]["total"] = statistics.median(sum(r.values()) for r in rows)
            out[phase]["steps"] = len(rows)
        if len(out) == 2:
            out["guarded_minus_paused"] = {s: out["guarded"][s] - out["paused"][s] for s in (*SEGMENTS, "total")}
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=12)
    ap.add_argument("--out", default=None)
    ap.add_argument("--pyprofile", action="store_true",
                    help="also cProfile the guarded blocks (slows them: segments not comparable; on Python "
                         ">= 3.12 cProfile sees every thread: the sender's and autograd's functions show too)")
    ap.add_argument("--parts", action="store_true", help="also time the client's per-step pieces (Parts)")
    ap.add_argument("--watch", choices=("blocks", "none", "auto"), default="blocks",
                    help="the modules watched: the GPT's 14 blocks (as frameworks.py), none, or watch='auto'")
    ap.add_argument("--max-grad-norm", type=float, default=0.0,
                    help="the Trainer's max_grad_norm (its default is 1.0; frameworks.py's hf variants use 0)")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = GPT2_SMALL
    data = token_batches(cfg, a.batch)
    import transformers
    from trainguard.hf import TrainguardCallback
    parts = Parts() if a.parts else None
    marks = Marks(a.warmup, a.block, a.pairs, cProfile.Profile() if a.pyprofile else None, parts)
    watch = {"blocks": watched(cfg), "none": [], "auto": "auto"}[a.watch]
    tg = TrainguardCallback(f"hf-segments-b{a.batch}-{os.getpid()}", target=a.target, deadline=2.0,
                            autocast_dtype=torch.bfloat16, watch=watch)

    class Before(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if marks.guard is None and parts is not None:
                parts.install(tg.guard)
            marks.guard = tg.guard
            marks.step_begin()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            marks.mark("pre_guard")

    class After(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
            model.register_forward_hook(lambda *_: marks.mark("output"))
            if parts is not None:  # the Trainer's optimizer, and inside it the guard's wrapper
                parts.wrap(optimizer.optimizer, "step", "the guard's wrapper step")
                parts.wrap(optimizer, "step", "the Trainer's optimizer step")

        def on_pre_optimizer_step(self, args, state, control, **kw):
            marks.mark("post_guard")

        def on_optimizer_step(self, args, state, control, **kw):
            marks.mark("optimized")

    hf_train(cfg, a.batch, data, f"/tmp/hf-segments-{a.batch}", marks.steps() + 1, [Before(), tg, After()], repeat=1000,
             max_grad_norm=a.max_grad_norm)
    res = {"batch": a.batch, "block": a.block, "pairs": a.pairs, "gpu": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "median_ms": marks.summary(),
           "watch": a.watch, "max_grad_norm": a.max_grad_norm, "measured_at_backward": dict(tg.guard.backward_gate.counters),
           "gate_graphs": dict(tg.guard.gated.graphs.counters, address_uploads=tg.guard.gated.graphs.address_uploads)}
    if parts is not None:  # a paused guard runs few of these pieces
        res["parts_us"] = parts.per_step_phases(marks.steps_in)
        res["sender_ms_per_step_by_segment"] = parts.overlap(marks.cuts)
    if marks.profiler is not None:
        marks.profiler.disable()
        text = io.StringIO()
        pstats.Stats(marks.profiler, stream=text).sort_stats("tottime").print_stats(45)
        pstats.Stats(marks.profiler, stream=text).sort_stats("cumulative").print_stats("trainguard", 45)
        res["pyprofile"] = text.getvalue()
        print(res["pyprofile"])
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
