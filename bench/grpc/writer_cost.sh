#!/usr/bin/env bash
# CPU of the journal writer per step row at paced rates (WriterCost.java) against the packaged app.
# Usage: bench/grpc/writer_cost.sh [rows per rate (20000)] [rates (1000 5000 20000)]
set -euo pipefail
cd "$(dirname "$0")"
APP=${TG_APP_SRC:-../../target/quarkus-app}
CP="$APP/app/*:$APP/lib/main/*:$APP/lib/boot/*"
OUTDIR=$(mktemp -d)
trap 'rm -rf "$OUTDIR"' EXIT
javac -d "$OUTDIR" -cp "$CP" WriterCost.java
rows=${1:-20000}
shift || true
if [[ $# -eq 0 ]]; then set -- 1000 5000 20000; fi
java -cp "$CP:$OUTDIR" WriterCost "$rows" "$@" 2>&1 | grep -v "^WARN\|^SLF4J"
