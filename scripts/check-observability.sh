#!/usr/bin/env bash
# Checks the observability pack and the API contracts: promtool check/test rules on
# k8s/observability, the PrometheusRule equal to the plain rules file, the Grafana dashboard's
# JSON and queries, and buf lint (+ buf breaking against the last release tag, when there is one).
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
TAG="$(git tag --list 'v*' --sort=-v:refname | head -1)"
if [[ -n "$TAG" ]]; then
  "$BUF" breaking --against ".git#tag=${TAG}"
else
  log "buf breaking: no release tag (v*) yet, nothing to compare against"
fi
