"""Adaptive clipping on a real (small) training run: the same run four times, clip OFF / FIXED /
ZSCORE (ZClip) / PERCENTILE (AutoClip), with periodic bad batches that make grad-norm spikes.

The model is TinyHallo from examples/hallo_like.py (cross-attention blocks, AdamW), trained in fp32
with a deliberately aggressive learning rate. Every --bad-every steps the batch's inputs (and so its
target) are scaled by --bad-scale: the loss and the grad norm of that one step jump by orders of
magnitude, as with a corrupt shard or a mis-normalised sample.

Only the clip rule may act: spike_z_threshold is set to 1e9 and divergence_window to 10**6 in all four runs
(otherwise the sidecar's default spike action, SKIP, would take the bad steps away and the
divergence detector would order a ROLLBACK). The guard runs in mode="sync" so that every step's
verdict, and the bounds it carries, come from the sidecar.

Per step it records: train loss, held-out loss (a fixed set of clean batches, no grad), raw grad
norm, the verdict's action, the clip threshold the verdict carried (CLIP only) and the threshold in
force before the step (FIXED/PERCENTILE: LocalBounds.clip_threshold; ZSCORE: LocalBounds.max_grad_norm,
i.e. ZClip's mean + z*std above which the sidecar clips).

python bench/clipping/curves.py --out bench/clipping/results --png docs/img/clipping.png
"""
import argparse
import csv
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "clients", "python"))
sys.path.insert(0, os.path.join(REPO, "examples"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import trainguard  # noqa: E402
from hallo_like import TinyHallo  # noqa: E402

MODES = {
    "OFF": {"clip_mode": "OFF"},
    "FIXED": {"clip_mode": "FIXED", "clip_threshold": 1.0},
    "ZSCORE": {"clip_mode": "ZSCORE", "zclip_z_threshold": 2.5},
    "PERCENTILE": {"clip_mode": "PERCENTILE", "autoclip_percentile": 10.0},
}
# divergence_window, not divergence_ratio: the client's generated stubs (clients/python/trainguard/_proto)
# predate Policy.divergence_ratio. A window of 10**6 steps means the detector never fires here.
ONLY_CLIP = {"spike_z_threshold": 1e9, "divergence_window": 10**6}


def batch(step, scale=1.0):
    g = torch.Generator().manual_seed(step)
    lat, emb = torch.randn(16, 6, 32, generator=g) * scale, torch.randn(16, 32, generator=g) * scale
    target = lat.roll(1, -1) * 0.5 + emb[:, None, :] * 0.1
    return lat, emb, target


def train(mode, args, target):
    torch.manual_seed(args.seed)
    model = TinyHallo()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    policy = dict(MODES[mode], **ONLY_CLIP)
    run_id = f"clip-{mode.lower()}-{int(time.time())}"
    guard = trainguard.Guard(model, opt, run=run_id, target=target, policy=policy, mode="sync",
                             deadline=args.deadline, failure_mode="closed", watch=None)
    held = [batch(1_000_000 + i) for i in range(4)]
    rows, in_force = [], float("nan")
    t0 = time.perf_counter()
    try:
        for step in range(args.steps):
            bad = step > 0 and step % args.bad_every == 0
            lat, emb, tgt = batch(step, args.bad_scale if bad else 1.0)
            loss = nn.functional.mse_loss(model(lat, emb), tgt)
            loss.backward()
            with torch.no_grad():  # the same global L2 norm the client reports
                gnorm = float(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm())
            v = guard.step(step, loss)
            guard.optimizer_step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                ev = sum(float(nn.functional.mse_loss(model(a, b), c)) for a, b, c in held) / len(held)
            rows.append({"mode": mode, "step": step, "bad_batch": int(bad), "train_loss": float(loss.detach()),
                         "eval_loss": ev, "grad_norm": gnorm, "action": v.action.name,
                         "clip_threshold": v.clip_threshold if v.action == trainguard.Action.CLIP else float("nan"),
                         "threshold_in_force": in_force})
            b = v.bounds
            if b is not None:
                t = b.clip_threshold if b.clip_threshold > 0 else (
                    b.max_grad_norm if mode == "ZSCORE" and 0 < b.max_grad_norm < 1e300 else float("nan"))
                in_force = t
    finally:
        guard.close()
    print(f"{mode:10s} {args.steps} steps in {time.perf_counter() - t0:.1f}s, counters {guard.counters}", flush=True)
    return rows


def summarise(rows, args):
    bad_steps = sorted({r["step"] for r in rows if r["bad_batch"]})
    ev = [r["eval_loss"] for r in rows]
    last = ev[-50:]
    exc, rec = [], []
    for s in bad_steps:
        base = sum(ev[s - 5:s]) / 5  # held-out loss over the 5 steps before the bad batch
        window = ev[s:min(len(ev), s + args.bad_every)]
        exc.append(max(window) / base)
        # steps until the held-out loss is back within 10% of that baseline and stays there (until the
        # next bad batch); None: it never settles back within the window
        above = [k for k, e in enumerate(window) if e > 1.1 * base]
        rec.append(0 if not above else (above[-1] + 1 if above[-1] < len(window) - 1 else None))
    recovered = [r for r in rec if r is not None]
    return {
        "final_eval_loss_last50": sum(last) / len(last),
        "final_train_loss_last50_clean": (lambda xs: sum(xs) / len(xs))(
            [r["train_loss"] for r in rows[-50:] if not r["bad_batch"]]),
        "clip_verdicts": sum(r["action"] == "CLIP" for r in rows),
        "clip_verdicts_on_bad": sum(r["action"] == "CLIP" and r["bad_batch"] for r in rows),
        "other_verdicts": sorted({r["action"] for r in rows} - {"APPLY", "CLIP"}),
        "max_excursion_x": max(exc),
        "mean_excursion_x": sum(exc) / len(exc),
        "recover_steps_mean": (sum(recovered) / len(recovered)) if recovered else None,
        "recover_steps_max": max(recovered) if recovered else None,
        "not_recovered": sum(r is None for r in rec),
        "bad_steps": len(bad_steps),
    }


def plot(all_rows, summary, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"OFF": "#d62728", "FIXED": "#7f7f7f", "ZSCORE": "#1f77b4", "PERCENTILE": "#2ca02c"}
    label = {"OFF": "clip OFF", "FIXED": "FIXED 1.0", "ZSCORE": "ZSCORE (ZClip z=2.5)",
             "PERCENTILE": "PERCENTILE (AutoClip p=10)"}
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    bad = sorted({r["step"] for r in all_rows if r["bad_batch"]})
    for m in MODES:
        rs = [r for r in all_rows if r["mode"] == m]
        s = summary[m]
        a1.plot([r["step"] for r in rs], [r["eval_loss"] for r in rs], color=colors[m], lw=1.3,
                label=f"{label[m]}: last-50 {s['final_eval_loss_last50']:.3f}, {s['clip_verdicts']} CLIP")
    for b in bad:
        a1.axvline(b, color="k", alpha=0.15, lw=0.8)
        a2.axvline(b, color="k", alpha=0.15, lw=0.8)
    a1.set_yscale("log")
    a1.set_ylabel("held-out loss (log)")
    a1.set_title(f"TinyHallo, AdamW lr={args.lr}, batch x{args.bad_scale:g} every {args.bad_every} steps "
                 f"(grey lines), seed {args.seed}", fontsize=10)
    a1.legend(fontsize=8, loc="lower left")
    for m, c, a in (("OFF", colors["OFF"], 0.45), ("ZSCORE", "k", 0.8)):
        rs = [r for r in all_rows if r["mode"] == m]
        a2.plot([r["step"] for r in rs], [r["grad_norm"] for r in rs], color=c, lw=0.8, alpha=a,
                label=f"raw grad norm, {m} run")
    for m in ("FIXED", "ZSCORE", "PERCENTILE"):
        rs = [r for r in all_rows if r["mode"] == m]
        a2.plot([r["step"] for r in rs], [r["threshold_in_force"] for r in rs], color=colors[m], lw=1.2,
                label=f"{label[m]}: " + ("clip above (mean+z*std)" if m == "ZSCORE" else "clip threshold"))
        cs = [r for r in rs if r["action"] == "CLIP"]
        a2.scatter([r["step"] for r in cs], [r["clip_threshold"] for r in cs], color=colors[m], s=9, zorder=3)
    a2.set_yscale("log")
    a2.set_ylabel("grad norm / threshold (log)")
    a2.set_xlabel("step   (dots: the threshold a CLIP verdict carried)")
    a2.legend(fontsize=7, loc="upper left", ncol=3, framealpha=0.9)
    a2.set_ylim(top=a2.get_ylim()[1] * 30)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    print("plot:", path, os.path.getsize(path), "bytes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--bad-every", type=int, default=50)
    ap.add_argument("--bad-scale", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline", type=float, default=10.0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--target", help="sidecar address; default: start the jar ($TRAINGUARD_JAR)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--png", default=os.path.join(REPO, "docs", "img", "clipping.png"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    sidecar = None if args.target else trainguard.Sidecar().start(timeout=240)
    target = args.target or sidecar.target
    all_rows = []
    try:
        for m in args.modes.split(","):
            all_rows += train(m, args, target)
    finally:
        if sidecar:
            sidecar.stop()

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "curves.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        w.writeheader()
        w.writerows(all_rows)
    modes = [m for m in MODES if any(r["mode"] == m for r in all_rows)]
    summary = {m: summarise([r for r in all_rows if r["mode"] == m], args) for m in modes}
    meta = {"args": vars(args), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
            "torch": torch.__version__, "python": platform.python_version()}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary}, f, indent=1)
    print("| run | held-out loss, mean of last 50 steps | CLIP verdicts (on bad batches) | "
          "max / mean loss excursion after a bad batch | steps to recover (mean / max) |")
    print("|---|---|---|---|---|")
    for m in modes:
        s = summary[m]
        rec = "-" if s["recover_steps_mean"] is None else f"{s['recover_steps_mean']:.1f} / {s['recover_steps_max']}"
        if s["not_recovered"]:
            rec += f" ({s['not_recovered']} of {s['bad_steps']} not within {args.bad_every})"
        print(f"| {m} | {s['final_eval_loss_last50']:.4f} | {s['clip_verdicts']} ({s['clip_verdicts_on_bad']}) | "
              f"x{s['max_excursion_x']:.2f} / x{s['mean_excursion_x']:.2f} | {rec} |")
    if set(modes) == set(MODES):
        plot(all_rows, summary, args, args.png)


if __name__ == "__main__":
    sys.exit(main())
