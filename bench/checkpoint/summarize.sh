#!/usr/bin/env bash
# Median over rounds of each configuration's per-round median, from a run.sh log.
#   summarize.sh LOG [OUT.json]   with OUT.json: also writes the medians, every round's values, the
#                                 log's header lines and (SET=formats) the per-round ratios to safetensors
grep -E '^(MEDIAN|RSS|#|## round)' "$1" | sed -E 's/ size=[0-9]+| passes=[0-9]+//' | python3 -c '
import sys, statistics, collections, json
g = collections.defaultdict(list)
header, rounds, cur = [], [], None
for line in sys.stdin:
    parts = line.split()
    if line.startswith("## round"):
        cur = {"round": line.strip("# \n"), "gbps": {}}
        rounds.append(cur)
        continue
    if line.startswith("#"):
        header.append(line.strip("# \n"))
        continue
    if parts[0] == "MEDIAN":
        key = " ".join(p for p in parts[1:] if not p.startswith("gbps="))
        v = float([p for p in parts if p.startswith("gbps=")][0][5:])
        g[key].append(v)
        if cur is not None:
            cur["gbps"][key] = v
    else:
        k, v = parts[1].split("=")
        g["RSS " + k + " (MB)"].append(int(v) / 1024)
for k in sorted(g):
    print(f"{k:70s} median {statistics.median(g[k]):7.2f}   rounds: {[round(x, 2) for x in g[k]]}")
# SET=formats: each configuration over the Java verifier on safetensors of the same round
ratios = collections.defaultdict(list)
for r in rounds:
    st = [v for k, v in r["gbps"].items() if "via=verifier" in k and k.startswith("file=") and k.split()[0].endswith(".safetensors")]
    if st:
        for k, v in r["gbps"].items():
            ratios[k].append(round(v / st[0], 3))
for k in sorted(ratios):
    print(f"ratio to verifier/safetensors, {k:50s} median {statistics.median(ratios[k]):6.3f}   rounds: {ratios[k]}")
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump({"header": header, "median_of_round_medians": {k: statistics.median(v) for k, v in g.items()},
                   "rounds": rounds, "ratio_to_verifier_safetensors": {k: {"median": statistics.median(v), "rounds": v}
                                                                     for k, v in ratios.items()}}, f, indent=1)
' ${2:+"$2"}
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
