#!/usr/bin/env bash
# Checks the observability pack and the API contracts: promtool check/test rules on
# k8s/observability, the PrometheusRule equal to the plain rules file, the Grafana dashboard's
# JSON and queries, and buf lint + buf breaking against the last release (tag, else proto/baseline).
# Installs promtool (Debian `prometheus`) and buf (go install) when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OBS=k8s/observability
BUF_VERSION="${BUF_VERSION:-v1.75.0}"
TOOLS="${TRAINGUARD_TOOLS:-${HOME}/.cache/trainguard}"
log() { printf 'check-observability: %s\n' "$*" >&2; }

if ! command -v promtool >/dev/null; then
  log "installing promtool (apt: prometheus)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if ! python3 -c "import yaml" 2>/dev/null; then
  log "installing python3-yaml (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-yaml >/dev/null
fi

promtool check rules "$OBS/rules.yaml"
promtool test rules "$OBS/rules_test.yaml"
python3 - "$OBS" <<'PY'
import json, os, sys, yaml
obs = sys.argv[1]
plain = yaml.safe_load(open(os.path.join(obs, "rules.yaml")))["groups"]
op = yaml.safe_load(open(os.path.join(obs, "prometheusrule.yaml")))
assert op["kind"] == "PrometheusRule" and op["spec"]["groups"] == plain, \
    "prometheusrule.yaml differs from rules.yaml: regenerate it (see docs/operations.md)"
alerts = [r["alert"] for g in plain for r in g["rules"]]
assert all(r["annotations"].get("runbook") for g in plain for r in g["rules"]), "every alert needs a runbook line"
dash = json.load(open(os.path.join(obs, "grafana-dashboard.json")))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs and all("trainguard_" in e or e.startswith("up") for e in exprs), exprs
print(f"observability: {len(alerts)} alerts with runbooks, PrometheusRule in sync, dashboard {len(dash['panels'])} panels")
PY

# buf: lint the protos; breaking-change check against the newest release tag when one exists.
BUF="$(command -v buf || true)"
if [[ -z "$BUF" && -x "$TOOLS/bin/buf" ]]; then BUF="$TOOLS/bin/buf"; fi
if [[ -z "$BUF" ]]; then
  log "installing buf ${BUF_VERSION} (go install)"
  GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod go install "github.com/bufbuild/buf/cmd/buf@${BUF_VERSION}"
  BUF="$TOOLS/bin/buf"
fi
"$BUF" lint
# buf breaking: against the newest v* release tag when this clone has one, else against the
# committed image of the last released proto (a CI clone may carry no tags; docs/operations.md
# says how a release refreshes the image).
BASELINE=proto/baseline/release.binpb
TAG="$(git tag --list 'v*' --sort=-v:refname | head -1)"
AGAINST="${BASELINE}"
if [[ -n "$TAG" ]]; then AGAINST=".git#tag=${TAG}"; fi
"$BUF" breaking --against "$AGAINST"
# Negative control: a copy of the protos with one rpc removed must be refused, or the check above
# proves nothing (a stale or empty baseline would pass everything).
NEG="$(mktemp -d)"
cp -r buf.yaml proto "$NEG/"
sed -i '0,/^[[:space:]]*rpc /{/^[[:space:]]*rpc /d}' "$NEG/proto/trainguard/v1/trainguard.proto"
if cmp -s proto/trainguard/v1/trainguard.proto "$NEG/proto/trainguard/v1/trainguard.proto"; then
  log "FAIL negative control: no rpc line to remove"; rm -rf "$NEG"; exit 1
fi
if (cd "$NEG" && "$BUF" breaking --against "$ROOT/$BASELINE") >/dev/null 2>&1; then
  log "FAIL buf breaking accepted a proto with an rpc removed: the baseline check cannot fail"; rm -rf "$NEG"; exit 1
fi
rm -rf "$NEG"
log "buf breaking: ok against ${AGAINST}; negative control (an rpc removed) refused"
