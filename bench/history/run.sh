#!/usr/bin/env bash
# History API query speed over a 10^6-step journal (StepHistory), for docs/benchmarks.md.
# Usage: bench/history/run.sh [steps]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
./mvnw -B -ntp -q test-compile
CP="target/test-classes:target/classes:$(./mvnw -B -ntp -q dependency:build-classpath -Dmdep.outputFile=/dev/stdout)"
java -Dsteps="${1:-1000000}" -cp "$CP" io.trainguard.store.HistoryBench
