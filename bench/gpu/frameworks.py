"""Trainer step overhead of trainguard inside the frameworks (issue 21): Lightning with
trainguard.lightning.TrainguardCallback and the HF Trainer with trainguard.hf.TrainguardCallback,
each against the same framework unguarded, on the GPT-2-small-sized LM of gpt_model.py.

Paired rounds as in overhead.py: per round one unguarded run, one guarded, one unguarded; each run
is a fresh Trainer whose steps warmup..warmup+steps are timed inside the training loop (a callback
synchronizes CUDA and reads the clock), so Trainer start-up is not counted. Ratio = guarded ms/step
over the mean of the two unguarded runs around it; median, min and max over the rounds.

The guard watches the GPT's blocks, as overhead.py's does (``watched``): named through the
framework's module that holds the GPT, which ``watch="auto"`` would watch as one module. Until the
seventeenth session it did, so the earlier runs' figures carry no per-block statistics.

Usage: python frameworks.py --target unix:///tmp/tg.sock --batch 8 16 --rounds 5 --steps 30 --out res.json
       python frameworks.py --blocks 20 --rounds 10 --batch 8   # HF: guarded and unguarded blocks in one Trainer
       python frameworks.py --blocks 10 --rounds 30 --batch 8 --frameworks hf,hf-nosnap,hf-unsent  # diagnostics
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
from gpt_model import GPT, GPT2_SMALL  # noqa: E402


def watched(cfg):
    """The GPT's blocks as ``watch="auto"`` names them for the GPT alone (emb, h.0.., head), under the
    attribute ``gpt`` that LM and HFWrapped hold it in (a meta-device model: names, no memory)."""
    from trainguard.watch_names import auto_watch
    with torch.device("meta"):
        gpt = GPT(**cfg)
    return [f"gpt.{n}" for n in auto_watch(gpt)]


class Clock:
    def __init__(self, warmup, steps):
        self.warmup, self.steps, self.n, self.t0, self.ms = warmup, steps, 0, None, None

    def tick(self):
        if self.n == self.warmup or self.n == self.warmup + self.steps:
            torch.cuda.synchronize()
            now = time.perf_counter()
            if self.t0 is None:
                self.t0 = now
            else:
                self.ms = (now - self.t0) * 1000.0 / self.steps
        self.n += 1


def lightning_run(cfg, B, data, guarded, target, warmup, steps, run):
    import lightning.pytorch as pl

    class LM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.gpt = GPT(**cfg)

        def training_step(self, b, i):
            x, y = b
            return self.gpt(x, y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-4, weight_decay=0.1, fused=True)

    clock = Clock(warmup, steps)

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.tick()

    cbs = [Timer()]
    if guarded:
        from trainguard.lightning import TrainguardCallback
        cbs.insert(0, TrainguardCallback(run, target=target, deadline=2.0, autocast_dtype=torch.bfloat16,
                                         watch=watched(cfg)))
    trainer = pl.Trainer(max_steps=warmup + steps + 1, accelerator="gpu", devices=1, precision="bf16-mixed",
                         callbacks=cbs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer.fit(LM(), train_dataloaders=loader)
    gated = cbs[0].guard.counters["device_gated_steps"] if guarded else None
    return clock.ms, gated


class HFWrapped(torch.nn.Module):
    """The bench LM as the HF Trainer takes it: keyword inputs, a dict with the loss."""

    def __init__(self, cfg):
        super().__init__()
        torch.manual_seed(0)
        self.gpt = GPT(**cfg)

    def forward(self, idx, targets):
        return {"loss": self.gpt(idx, targets)}


def hf_train(cfg, B, data, out_dir, max_steps, callbacks, repeat, max_grad_norm=0.0, nan_filter=True, attach=None):
    """Runs a fresh HF Trainer (bf16, fused AdamW, no saving; no clipping unless ``max_grad_norm``)
    over ``data`` repeated; ``attach``: a TrainguardCallback attached to it (``attach(trainer)``)."""
    import transformers
    rows = [{"idx": x.cpu(), "targets": y.cpu()} for x, y in data]
    args = transformers.TrainingArguments(output_dir=out_dir, max_steps=max_steps,
                                          per_device_train_batch_size=B, learning_rate=3e-4, weight_decay=0.1,
                                          bf16=True, optim="adamw_torch_fused", save_strategy="no",
                                          logging_steps=10_000, report_to=[], max_grad_norm=max_grad_norm,
                                          logging_nan_inf_filter=nan_filter, dataloader_num_workers=0, disable_tqdm=True)
    flat = [{"idx": r["idx"][i], "targets": r["targets"][i]} for r in rows for i in range(B)]
    trainer = transformers.Trainer(model=HFWrapped(cfg), args=args, train_dataset=flat * repeat, callbacks=callbacks)
    if attach is not None:
        attach.attach(trainer)
    trainer.train()


def hf_run(cfg, B, data, guarded, target, warmup, steps, run, out_dir, at_backward=True):
    """One Trainer, guarded or not, timed per step. Guarded, the callback is given in callbacks=[...]
    and so takes the Trainer's NaN filter over on the device (device_loss_filter's default), while
    the unguarded Trainer keeps its host read: the ratio is the guarded Trainer against the stock one."""
    import transformers
    clock = Clock(warmup, steps)

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.tick()

    cbs = [Timer()]
    if guarded:
        from trainguard.hf import TrainguardCallback
        cbs.insert(0, TrainguardCallback(run, target=target, deadline=2.0, autocast_dtype=torch.bfloat16,
                                         measure_at_backward=at_backward, watch=watched(cfg)))
    hf_train(cfg, B, data, out_dir, warmup + steps + 1, cbs, repeat=64)
    gated = cbs[0].guard.counters["device_gated_steps"] if guarded else None
    if guarded:
        print(f"    measured at backward end: {cbs[0].guard.backward_gate.counters}", flush=True)
    return clock.ms, gated


class Blocks:
    """One Trainer, the guard paused and resumed in alternate blocks of ``size`` steps: unguarded,
    guarded, unguarded, ... (pairs + 1 unguarded blocks). Every guarded block is compared with the
    unguarded blocks on either side, so a host that drifts over seconds moves both alike. A paused
    guard still runs its callback and the optimizer wrapper (a few µs, counted as unguarded)."""

    def __init__(self, warmup, size, pairs, toggle="guard"):
        self.warmup, self.size, self.n_blocks = warmup, size, 2 * pairs + 1
        self.n, self.t0, self.ms = 0, None, []
        self.guard = self.loss_filter = None
        # "watch": the guard stays on, its module watch is detached in even blocks; "none": on in all (A/A)
        self.toggle = toggle

    def _switch(self, on):
        if self.toggle == "none":  # A/A: the guard on in every block, the ratios read the method's own bias
            return
        if self.toggle == "watch":
            w = self.guard.watch
            if on:
                w.attach()
            else:
                w.remove()
                w.reset()
        else:
            (self.guard.resume if on else self.guard.pause)()
            if self.toggle == "guard+filter":  # paused: the stock Trainer's own NaN filter; guarded: the device's
                self.loss_filter.enabled = on

    def steps(self):
        return self.warmup + self.size * self.n_blocks

    def tick(self):
        k = self.n - self.warmup
        if k >= 0 and k % self.size == 0 and len(self.ms) < self.n_blocks:
            torch.cuda.synchronize()
            if self.t0 is not None:
                self.ms.append((time.perf_counter() - self.t0) * 1000.0 / self.size)
            block = k // self.size  # even: unguarded, odd: guarded
            if block < self.n_blocks:  # pause() flushes the reports: not counted in either block
                self._switch(block % 2 == 1)
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()
        self.n += 1

    def ratios(self):
        return [self.ms[i] / ((self.ms[i - 1] + self.ms[i + 1]) / 2) for i in range(1, len(self.ms) - 1, 2)]


class Unsent:
    """Diagnostic only (the ``hf-unsent`` variant): the sender thread still builds every report and
    applies the answer, but ReportStep is answered in-process with the sidecar's first real answer,
    moved to the reported step (its bounds as far ahead of it as they were), so neither gRPC nor the
    sidecar run per step while the client's path stays the device gate. Says what the report's
    transport costs the step."""

    def __init__(self, transport):
        self.transport, self.first = transport, None

    def call(self, name, request, deadline=None):
        if name != "ReportStep":
            return self.transport.call(name, request, deadline)
        if self.first is None:
            self.first = self.transport.call(name, request, deadline)
        answer = type(self.first)()
        answer.CopyFrom(self.first)
        ahead = self.first.verdict.bounds.valid_until_step - self.first.verdict.step
        answer.verdict.step = request.report.step
        answer.verdict.bounds.valid_until_step = request.report.step + ahead
        return answer


# Variants of the HF blocks run. "hf" is the Trainer as the docs set it up. In the twenty-first pass that
# was TrainguardCallback(...).attach(trainer), whose NaN/Inf loss filter then runs on the device (in
# paused blocks too: the guard's own cost), and "hf-callback" was callbacks=[TrainguardCallback(...)],
# the Trainer's own filter (a host read per step) kept, the earlier passes' "hf". From the twenty-second
# pass on the callback finds its Trainer and installs the device's filter itself: "hf" is
# callbacks=[...], "hf-attach" the attached form, "hf-callback" still the Trainer's own filter
# (device_loss_filter=False). The diagnostic variants below get the device's filter from then on.
HF_VARIANTS = {
    "hf": dict(),
    "hf-attach": dict(attach=True),
    "hf-callback": dict(device_filter=False),
    "hf-late": dict(at_backward=False),                      # measured at on_pre_optimizer_step
    "hf-nosnap": dict(snapshots=False),                      # no in-memory snapshots
    "hf-unsent": dict(unsent=True),                          # reports not sent (Unsent)
    "hf-nowatch": dict(watch=()),                            # no module statistics
    "hf-onewatch": dict(watch=("gpt",)),                     # the whole model's output only (before s17)
    "hf-oneblock": dict(watch=("gpt.h.0",)),                 # one block of the 14
    # the guard on throughout, the 14 blocks' watch detached in every other block: the watch's own cost
    "hf-watch-ab": dict(toggle="watch"),
    # A/A: the guard on in every block, timed and paired as "hf": what this method reads with no difference
    "hf-aa": dict(toggle="none"),
    # the Trainer's default max_grad_norm=1.0 (it clips in place after backward), guarded and paused alike
    "hf-clip1": dict(max_grad_norm=1.0),
    "hf-clip1000": dict(max_grad_norm=1000.0),               # set, but never reached
    # the Trainer's NaN filter off in its arguments, guarded and paused alike (the callback alone)
    "hf-nofilter": dict(nan_filter=False),
    # paused blocks as the stock Trainer (its own NaN filter: the device's is disabled there), guarded
    # blocks attached; at the Trainer's default max_grad_norm too
    "hf-vs-stock": dict(toggle="guard+filter"),
    "hf-vs-stock-clip1": dict(toggle="guard+filter", max_grad_norm=1.0),
}


def hf_blocks_run(cfg, B, data, target, warmup, size, pairs, run, out_dir, at_backward=True, snapshots=True,
                  unsent=False, watch=None, toggle="guard", max_grad_norm=0.0, nan_filter=True, attach=False,
                  device_filter=True):
    """The HF Trainer with the guard paused in every other block of ``size`` steps (``Blocks``);
    ``watch`` the modules watched (default: the GPT's blocks)."""
    import transformers
    from trainguard.hf import TrainguardCallback
    blocks = Blocks(warmup, size, pairs, toggle)
    tg = TrainguardCallback(run, target=target, deadline=2.0, autocast_dtype=torch.bfloat16,
                            measure_at_backward=at_backward, snapshots=snapshots, device_loss_filter=device_filter,
                            watch=watched(cfg) if watch is None else list(watch))

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if unsent and blocks.guard is None:
                tg.guard.sender._transport = Unsent(tg.guard.sender._transport)
            blocks.guard, blocks.loss_filter = tg.guard, tg.loss_filter
            blocks.tick()

    hf_train(cfg, B, data, out_dir, blocks.steps() + 1, [tg, Timer()], repeat=1000, max_grad_norm=max_grad_norm,
             nan_filter=nan_filter, attach=tg if attach else None)  # attach() keeps tg where it is in the list
    device_filter = dict(tg.loss_filter.counters) if tg.loss_filter is not None else None
    return blocks, dict(tg.guard.counters), dict(tg.guard.backward_gate.counters), device_filter


def token_batches(cfg, B, n=4):
    """``n`` fixed random (input, target) token batches of ``B`` rows on the GPU."""
    g = torch.Generator().manual_seed(0)
    return [tuple(t.contiguous().cuda() for t in (r[:, :-1], r[:, 1:]))
            for r in (torch.randint(0, cfg["vocab"], (B, cfg["seq"] + 1), generator=g) for _ in range(n))]


def blocks_main(a, cfg, info):
    for B in a.batch:
        data = token_batches(cfg, B)
        for fw in a.frameworks.split(","):
            blocks, counters, early, device_filter = hf_blocks_run(cfg, B, data, a.target, a.warmup, a.blocks, a.rounds,
                                                    f"bench-{fw}-blocks-b{B}-{os.getpid()}", f"/tmp/{fw}-blocks-{B}",
                                                    **HF_VARIANTS[fw])
            rs = blocks.ratios()
            info["results"][f"batch{B}-{fw}-blocks"] = {
                "block_steps": a.blocks, "median": statistics.median(rs), "min": min(rs), "max": max(rs),
                "ratios": rs, "block_ms": blocks.ms, "device_gated_steps": counters["device_gated_steps"],
                "measured_at_backward": early, "device_loss_filter": device_filter}
            print(f"batch {B} {fw}, alternate blocks of {a.blocks} steps in one Trainer: median {statistics.median(rs):.3f} "
                  f"[{min(rs):.3f}, {max(rs):.3f}] over {len(rs)} pairs; block ms {[round(x, 2) for x in blocks.ms]}; "
                  f"gated {counters['device_gated_steps']}, at backward {early}, device loss filter {device_filter}",
                  flush=True)
            save(a, info)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--frameworks", default=None,
                    help="lightning, hf, hf-late (default lightning,hf); with --blocks the HF_VARIANTS (default hf)")
    ap.add_argument("--blocks", type=int, default=0,
                    help="HF only: one Trainer, the guard paused in alternate blocks of this many steps; "
                         "--rounds guarded blocks")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    a.frameworks = a.frameworks or ("hf" if a.blocks else "lightning,hf")
    names = a.frameworks.split(",")
    allowed = set(HF_VARIANTS) if a.blocks else {"lightning", "hf", "hf-late"}
    if len(set(names)) != len(names) or not set(names) <= allowed:
        ap.error(f"--frameworks: each at most once, from {sorted(allowed)}{' (with --blocks)' if a.blocks else ''}")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = GPT2_SMALL
    info = {"torch": torch.__version__, "python": platform.python_version(), "gpu": torch.cuda.get_device_name(0),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rounds": a.rounds, "steps": a.steps, "results": {}}
    for mod in ("lightning", "transformers", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    warnings.simplefilter("ignore")
    if a.blocks:
        blocks_main(a, cfg, info)
    else:
        rounds_main(a, cfg, info)


def save(a, info):
    """Writes what is measured so far: a later failure does not lose the earlier results."""
    if a.out:
        with open(a.out, "w") as f:
            json.dump(info, f, indent=1)


def rounds_main(a, cfg, info):
    for B in a.batch:
        data = token_batches(cfg, B)
        for fw in a.frameworks.split(","):
            rows = []
            k = 0

            def once(guarded):
                nonlocal k
                k += 1
                run = f"bench-{fw}-b{B}-{os.getpid()}-{k}"
                if fw == "lightning":
                    return lightning_run(cfg, B, data * 64, guarded, a.target, a.warmup, a.steps, run)
                # hf-late: the HF callback measuring at on_pre_optimizer_step, after the Trainer's loss read
                return hf_run(cfg, B, data, guarded, a.target, a.warmup, a.steps, run, f"/tmp/hf-bench-{k}",
                              at_backward=fw != "hf-late")

            once(False)  # warm-up: compile caches, allocator
            before, _ = once(False)
            for r in range(a.rounds):
                t, gated = once(True)
                after, _ = once(False)
                rows.append({"ms": t, "base_before": before, "base_after": after, "ratio": t / ((before + after) / 2),
                             "device_gated_steps": gated})
                print(f"  batch {B} {fw} round {r + 1}/{a.rounds}: {rows[-1]['ratio']:.3f} "
                      f"({t:.2f} vs {before:.2f}/{after:.2f} ms/step, gated {gated})", flush=True)
                before = after
            rs = [x["ratio"] for x in rows]
            info["results"][f"batch{B}-{fw}"] = {"median": statistics.median(rs), "min": min(rs), "max": max(rs),
                                                 "rounds": rows}
            print(f"batch {B} {fw}: median {statistics.median(rs):.3f} [{min(rs):.3f}, {max(rs):.3f}]", flush=True)
            save(a, info)


if __name__ == "__main__":
    main()
