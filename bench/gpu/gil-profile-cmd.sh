#!/usr/bin/env bash
# On the GPU machine (after `source bench/gpu/sidecar-up.sh`; bench/gpu/run.sh puts py-spy's wheel in .whl-prof,
# which this call must carry too, with .bundle and .whl): who holds
# the GIL during sender_probe.py's timed steps, guarded and unguarded. py-spy attaches once the
# probe's warm-up (and compilation) is over, samples RATE times a second for SECONDS without pausing
# the process, and gil_profile.py summarises. Results in $OUT/$TAG-<run>.{raw,txt,json,log}.
set -uo pipefail
TAG=${TAG:-gil}; RATE=${RATE:-1000}; SECONDS_=${SECONDS_:-8}; STEPS=${STEPS:-700}
SPY=${SPY:-/tmp/site/bin/py-spy}
# RUNS: tg (the guard as shipped), unguarded, nowatch (the guard with watch=[])
for run in ${RUNS:-tg unguarded}; do
  rm -f /tmp/probe-ready
  extra=()
  [ "$run" = unguarded ] && extra=(--unguarded)
  [ "$run" = nowatch ] && extra=(--kw '{"watch": []}')
  python3 bench/gpu/sender_probe.py --steps "$STEPS" --ready-file /tmp/probe-ready "${extra[@]}" \
    --out "$TAG-$run.json" > "$OUT/$TAG-$run.log" 2>&1 &
  pid=$!
  while [ ! -f /tmp/probe-ready ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
  "$SPY" record -p $pid --gil --threads --nonblocking -r "$RATE" -d "$SECONDS_" -f raw -o "$OUT/$TAG-$run.raw" > /dev/null 2>&1
  wait $pid
  step_ms=$(python3 -c "import json; print(json.load(open('$OUT/$TAG-$run.json'))['step_ms'])")
  python3 bench/gpu/gil_profile.py "$OUT/$TAG-$run.raw" --rate "$RATE" --seconds "$SECONDS_" --step-ms "$step_ms" \
    | tee "$OUT/$TAG-$run.txt"
done
