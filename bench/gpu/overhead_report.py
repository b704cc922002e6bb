"""The summary overhead.py prints for one batch size: each variant's ratio to the unguarded baseline
(median, min, max over the paired rounds), where its launches returned, the guard's and the sender
thread's time per step, garbage collections, and the guard's time split over its pieces; and each
round's line."""
import statistics


def host_steps(starts, launched, snapshots):
    """A run's host side from each step's start (perf_counter) and when its launches returned: its
    slowest step (where the host stalled) and median step, and the snapshots taken in it."""
    gaps = [(b - a) * 1000.0 for a, b in zip(starts, starts[1:] + [launched])]
    return {"slowest_step_host_ms": max(gaps), "slowest_step": gaps.index(max(gaps)),
            "median_step_host_ms": statistics.median(gaps), "snapshots": snapshots}


def snapshots_taken(guard):
    """In-memory snapshots ``guard`` has taken so far (0 without a guard or snapshots)."""
    store = guard.recovery.store if guard is not None else None
    return store.stats["taken"] if store is not None else 0


def print_round(batch, r, rounds, rows, variants):
    print(f"  batch {batch} round {r + 1}/{rounds}: " + ", ".join(
        f"{v} {rows[v][-1]['ratio']:.3f} (snapshots {rows[v][-1]['snapshots']}, slowest host step "
        f"{rows[v][-1]['slowest_step']} {rows[v][-1]['slowest_step_host_ms']:.1f} ms)" for v in variants), flush=True)


def print_summary(batch, nparams, res, variants):
    print(f"\nbatch {batch}: {nparams / 1e6:.1f}M parameters, baseline {res['baseline_ms_median']:.2f} ms/step "
          f"[{res['baseline_ms_min']:.2f}, {res['baseline_ms_max']:.2f}]")
    print(f"  the baseline's optimizer.step(): {res['baseline_optimizer_us']:.0f} us/step (compare guard us), "
          f"{res.get('baseline_optimizer_thread_cpu_us', float('nan')):.0f} us of CPU (compare guard CPU)")
    print(f"  {'variant':10s} {'median':>7s} {'min':>7s} {'max':>7s} {'ms/step':>8s} {'guard us':>9s}")
    for v in variants:
        s = res["variants"][v]
        print(f"  {v:10s} launched in {s['launch_ms_median']:.2f} ms/step, the baseline next to it in "
              f"{s['base_launch_ms_median']:.2f}")
        print(f"  {v:10s} {s['median']:7.3f} {s['min']:7.3f} {s['max']:7.3f} {s['ms_median']:8.2f} "
              f"{s.get('guard_cpu_us', float('nan')):9.0f}  guard CPU {s.get('guard_thread_cpu_us', float('nan')):.0f}, "
              f"sender thread CPU {s.get('sender_cpu_us', float('nan')):.0f} us/step")
    for k, x in res["gc_per_step"].items():
        print(f"  {k} garbage collections per step (gen 0/1/2): " + "/".join(f"{c:.3f}" for c in x["collections"])
              + ", ms per step: " + "/".join(f"{m:.3f}" for m in x["ms"]))
    for v in variants:
        if res["variants"][v].get("guard_parts_us"):
            print(f"  {v} us/step:", ", ".join(f"{k} {t:.0f}" for k, t in res["variants"][v]["guard_parts_us"].items()))
            print(f"  {v} p50/p90/max us, first-step share, top-5% share:", "; ".join(
                f"{k} {x['p50_us']:.0f}/{x['p90_us']:.0f}/{x['max_us']:.0f} {x['first_step_share']:.2f} "
                f"{x['top5pct_share']:.2f}" for k, x in res["variants"][v]["guard_parts_spread"].items()))
