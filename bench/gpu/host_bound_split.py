"""A variant's ratio by how host-bound its rounds were: overhead.py's paired rounds, pooled over one or
more result files, binned by the baseline's ms/step around each round (the mean of the baselines
before and after it). Where the unguarded step is close to the GPU's own time, part of a guard's host
work fits in the GPU's slack; where the host alone sets the pace, all of it adds (docs/benchmarks.md,
issue 21, eighth pass).

Usage: python3 host_bound_split.py RESULT.json [...] [--batch batch8] [--variants tg,tg_inproc,control]
       [--edges 19.8,21,23]
"""
import argparse
import json
import statistics


def rounds_of(paths, batch, variant):
    """(baseline ms around the round, the variant's extra ms, ratio) of every round in ``paths``."""
    out = []
    for path in paths:
        with open(path) as f:
            rows = json.load(f)["results"][batch]["variants"].get(variant, {}).get("rounds", [])
        for r in rows:
            base = (r["base_before"] + r["base_after"]) / 2
            out.append((base, r["ms"] - base, r["ratio"]))
    return out


def split(rounds, edges):
    """[(low, high, rounds, median extra ms, median ratio)] per bin of baseline ms."""
    bounds = [0.0] + list(edges) + [float("inf")]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        rs = [r for r in rounds if lo <= r[0] < hi]
        if rs:
            out.append((lo, hi, len(rs), statistics.median(r[1] for r in rs), statistics.median(r[2] for r in rs)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--batch", default="batch8")
    ap.add_argument("--variants", default="tg,tg_inproc,control")
    ap.add_argument("--edges", default="19.8,21,23", help="bin edges, baseline ms/step")
    a = ap.parse_args()
    edges = [float(e) for e in a.edges.split(",")]
    print("variant     baseline ms    rounds  extra ms  ratio")
    for v in a.variants.split(","):
        for lo, hi, n, extra, ratio in split(rounds_of(a.files, a.batch, v), edges):
            print(f"{v:10s}  {lo:5.1f}-{hi:<5.1f}  {n:6d}  {extra:8.2f}  {ratio:.3f}")


if __name__ == "__main__":
    main()
