#!/usr/bin/env bash
# Run page load time for a 10^6-step run in headless Chromium (Navigation Timing), for
# docs/benchmarks.md. Needs chromium + chromium-driver (scripts/test.sh installs them) and the
# packaged jar (built here when missing; REBUILD=1 rebuilds it).
# Usage: bench/history/page-load.sh [steps] [reloads] [warm-up seconds]  -> target/bench/run-page-load.txt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [[ "${REBUILD:-0}" == 1 || ! -f target/quarkus-app/quarkus-run.jar ]]; then
  ./mvnw -B -ntp -q package -DskipTests
fi
./mvnw -B -ntp -q test-compile
CP="target/test-classes:target/classes:$(./mvnw -B -ntp -q dependency:build-classpath -Dmdep.outputFile=/dev/stdout)"
java -Dsteps="${1:-1000000}" -Dloads="${2:-15}" -Dwarmup="${3:-20}" -cp "$CP" io.trainguard.web.RunPageLoadBench
