#!/usr/bin/env bash
# Runs every trainguard test on a fresh Debian machine with Java 17: installs what is missing
# (Debian's Python stack, a PyTorch venv, Go for kustomize), checks the Kubernetes manifests, then
# the Java suite (engine unit tests, @QuarkusTest gRPC/REST/health/metrics tests, the packaged-jar
# kill -9 and integration tests) and the Python client's fault-injection suite on both Python
# stacks against the packaged jar.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

step() { echo; echo "=== $*"; }

step "installing the Python stacks (idempotent)"
clients/python/scripts/setup-envs.sh all

# First: it also installs kustomize and helm, which ManifestConsistencyTest uses to render the
# overlays, the component examples and the Helm chart.
step "Kubernetes manifests against the API schemas"
scripts/validate-k8s.sh

# The run page's browser test (Selenium -> chromium-driver) and promtool (metrics format, alert rules).
step "installing chromium, chromium-driver and promtool (idempotent)"
# python3-prometheus-client: its strict OpenMetrics parser (scripts/check-openmetrics.py, MetricsFormatIT).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v promtool >/dev/null \
    || ! /usr/bin/python3 -c "import prometheus_client" 2>/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver prometheus \
    python3-prometheus-client >/dev/null
fi

step "observability pack and contracts: promtool rules, dashboard, buf lint/breaking"
scripts/check-observability.sh

step "Java: unit, @QuarkusTest and packaged-jar tests"
# includes the reliability suite (src/test/java/io/trainguard/reliability/*IT: ~10,700 hostile
# requests, kill -9 under load, disk full on a tmpfs when root, header bombs; docs/reliability.md)
./mvnw -B -ntp verify

step "Python client and fault-injection suite (venv: current torch; Debian: torch 1.13)"
TRAINGUARD_JAR="$PWD/target/quarkus-app/quarkus-run.jar" clients/python/scripts/run-tests.sh all

step "Python client wheel (pip install ./clients/python; tests/test_install.py installs and runs one)"
"${TRAINGUARD_VENV:-/opt/trainguard-venv}/bin/python" -m pip wheel --no-deps --no-build-isolation -q \
  -w target/python-dist clients/python
ls target/python-dist/trainguard-*.whl

step "all trainguard tests passed"
