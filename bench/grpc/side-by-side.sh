#!/usr/bin/env bash
# ReportStep latency of two builds of the sidecar, run alternately (before, after, before, after, ...)
# so that both see the same machine state; prints the p50/p99 ratios of every run and their medians.
# Usage: bench/grpc/side-by-side.sh BEFORE_APP AFTER_APP [PAIRS=3] [OUT=results/side-by-side]
#   BEFORE_APP / AFTER_APP: a packaged target/quarkus-app of each build, e.g. one built in a
#   `git worktree add --detach /tmp/before <commit>` with `./mvnw -q package -Dmaven.test.skip=true`.
set -euo pipefail
before=$(realpath "$1"); after=$(realpath "$2"); pairs=${3:-3}  # paths as given, before the cd
cd "$(dirname "$0")"
out=${4:-results/side-by-side}
mkdir -p "$out"
for i in $(seq 1 "$pairs"); do
  for b in before after; do
    src=$after; [ "$b" = before ] && src=$before
    echo "$b $i: start $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
    TG_APP_SRC=$src TG_APP_DIR=/tmp/side-by-side-$b OUT="$out/$b-$i" ./run.sh latency > "$out/$b-$i.log" 2>&1
  done
done
"${PY:-/usr/bin/python3}" - "$out" "$pairs" <<'PY'
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
for b in ("before", "after"):
    ratios = {"tcp": [], "unix": []}
    for i in range(1, pairs + 1):
        lat = json.load(open(f"{out}/{b}-{i}/latency.json"))["latency"]
        cells = []
        for t in ("tcp", "unix"):
            c, r = lat[f"{t}/check"], lat[f"{t}/report"]
            ratios[t].append(r["p50_us"] / c["p50_us"])
            cells.append(f"{t} {c['p50_us']:.0f}/{r['p50_us']:.0f} us p50 {ratios[t][-1]:.3f}x p99 {r['p99_us'] / c['p99_us']:.2f}x")
        print(f"{b} {i}: " + "; ".join(cells))
    print(f"{b}: median ReportStep/Check p50 TCP {statistics.median(ratios['tcp']):.3f}x, "
          f"Unix {statistics.median(ratios['unix']):.3f}x")
PY
