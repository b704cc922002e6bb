#!/usr/bin/env bash
# Median over rounds of each configuration's per-round median, from a run.sh log.
grep -E '^(MEDIAN|RSS)' "$1" | sed -E 's/ size=[0-9]+| passes=[0-9]+//' | python3 -c '
import sys, statistics, collections
g = collections.defaultdict(list)
for line in sys.stdin:
    parts = line.split()
    if parts[0] == "MEDIAN":
        key = " ".join(p for p in parts[1:] if not p.startswith("gbps="))
        g[key].append(float([p for p in parts if p.startswith("gbps=")][0][5:]))
    else:
        k, v = parts[1].split("=")
        g["RSS " + k + " (MB)"].append(int(v) / 1024)
for k in sorted(g):
    print(f"{k:70s} median {statistics.median(g[k]):7.2f}   rounds: {[round(x, 2) for x in g[k]]}")
'
# The default configuration's single scans: the first in each JVM (after the warm-up where run.sh asks for it) and the rest.
grep -E '^ROUND' "$1" | python3 -c '
import sys, statistics, collections
seen = collections.defaultdict(list)
for line in sys.stdin:
    kv = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
    seen[kv["file"]].append(float(kv["gbps"]))
for f, v in seen.items():
    cold, warm = v[0::3], [x for i, x in enumerate(v) if i % 3]
    print(f"default scans of {f}: first in its JVM {[round(x, 2) for x in cold]}, later: median {statistics.median(warm):.2f} of {[round(x, 2) for x in warm]}")
'
