#!/usr/bin/env bash
# Validates every Kubernetes manifest under k8s/ offline: the kustomize build of the base, of each
# overlay and of each example of the sidecar component (k8s/examples/*), and `helm template` of the
# chart with every example values file (k8s/helm/trainguard/ci/*.yaml, after `helm lint --strict`),
# against the Kubernetes API's JSON schemas (strict: unknown fields fail). CRDs (PodMonitor,
# PrometheusRule, PyTorchJob, JobSet, TrainJob, TrainingRuntime) are checked against the subset
# schemas in k8s/schemas/, whose embedded pod and Job templates refer to the Kubernetes schemas.
# Every rendered pod template must pass the "restricted" Pod Security Standard as evaluated by
# k8s.io/pod-security-admission (k8s/psa-check). Exits non-zero on any failure.
#
# Tools (installed once, cached outside the repo in $TRAINGUARD_TOOLS, default ~/.cache/trainguard;
# Go builds reuse the Go module and build caches, $HOME/go and ~/.cache/go-build):
#   kubernetes-validate (PyPI; ships the API schemas of Kubernetes 1.25..1.37) in a venv,
#   kustomize v5 (Go module proxy, `go install`), falling back to `kubectl kustomize`,
#   helm v3 (Go module proxy, `go install`), psa-check (k8s/psa-check, `go build`).
# Usage: scripts/validate-k8s.sh            (K8S_VERSIONS="1.29.0 1.33.0 1.37.0" by default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TRAINGUARD_TOOLS:-${HOME}/.cache/trainguard}"
KV_VERSION="1.37.0"
KUSTOMIZE_VERSION="v5.7.1"
HELM_VERSION="v3.22.0"
# 1.29: first release with native sidecars on by default (our minimum); 1.33: sidecars GA.
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 1.33.0 1.37.0}"
VENV="${TOOLS}/k8s-venv"
BIN="${TOOLS}/bin"
mkdir -p "${BIN}"

log() { printf 'validate-k8s: %s\n' "$*" >&2; }

ensure_python_tools() {
  if [[ -x "${VENV}/bin/python" ]] \
     && "${VENV}/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '${KV_VERSION}')" 2>/dev/null; then
    return
  fi
  log "installing kubernetes-validate ${KV_VERSION} into ${VENV}"
  if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "${VENV}"
  python3 -m venv "${VENV}"
  "${VENV}/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==${KV_VERSION}" "PyYAML>=6" "jsonschema>=4.18"
}

# Prints the command that renders a kustomization directory.
kustomize_cmd() {
  if [[ -x "${BIN}/kustomize" ]]; then echo "${BIN}/kustomize build"; return; fi
  if ! command -v go >/dev/null 2>&1 && ! command -v kubectl >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    log "installing Go (Debian golang-go) to build kustomize"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >&2
  fi
  if command -v go >/dev/null 2>&1; then
    log "installing kustomize ${KUSTOMIZE_VERSION} into ${BIN} (go install, once)"
    if GOBIN="${BIN}" go install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}" >&2; then
      echo "${BIN}/kustomize build"; return
    fi
    log "go install failed; trying kubectl"
  fi
  if command -v kubectl >/dev/null 2>&1; then echo "kubectl kustomize"; return; fi
  log "no kustomize: install Go (apt-get install golang-go) or kubectl"; exit 2
}

ensure_go() {
  if command -v go >/dev/null 2>&1; then return; fi
  if [[ $(id -u) == 0 ]]; then
    log "installing Go (Debian golang-go)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >&2
  fi
  command -v go >/dev/null 2>&1 || { log "no Go: install it (apt-get install golang-go)"; exit 2; }
}

# helm, built once from the Go module proxy; rebuilt when HELM_VERSION changes.
ensure_helm() {
  # (a go-installed helm reports only major.minor, so the installed version is kept in a stamp)
  if [[ -x "${BIN}/helm" ]] && [[ "$(cat "${BIN}/helm.version" 2>/dev/null)" == "${HELM_VERSION}" ]]; then
    return
  fi
  ensure_go
  log "installing helm ${HELM_VERSION} into ${BIN} (go install, once; several minutes on 2 cores)"
  GOBIN="${BIN}" go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
  echo "${HELM_VERSION}" > "${BIN}/helm.version"
}

# psa-check: rebuilt from k8s/psa-check each run (seconds once the Go build cache is warm).
ensure_psa_check() {
  ensure_go
  (cd "${ROOT}/k8s/psa-check" && go build -o "${BIN}/psa-check" .) >&2
}

ensure_python_tools
KUSTOMIZE="$(kustomize_cmd)"
ensure_helm
ensure_psa_check
HELM="${BIN}/helm"
log "kustomize: ${KUSTOMIZE}; helm: ${HELM_VERSION}; schemas: Kubernetes ${K8S_VERSIONS}"

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

# Render the base, every overlay and every component example; a failing build is itself an error.
status=0
for dir in "${ROOT}"/k8s/base "${ROOT}"/k8s/overlays/*/ "${ROOT}"/k8s/examples/*/; do
  dir="${dir%/}"
  name="$(basename "$(dirname "${dir}")")-$(basename "${dir}")"
  if ! ${KUSTOMIZE} "${dir}" > "${WORK}/build-${name}.yaml" 2> "${WORK}/build-${name}.err"; then
    log "FAIL kustomize build ${dir#"${ROOT}"/}:"; cat "${WORK}/build-${name}.err" >&2; status=1
  fi
done

# The Helm chart: lint and render with every example values file (release name = file name
# without -values.yaml; the values may refer to it, e.g. the rendezvous host).
CHART="${ROOT}/k8s/helm/trainguard"
# A helm built by `go install` assumes Kubernetes 1.20 without a cluster: render for our minimum.
HELM_KUBE=(--kube-version "${K8S_VERSIONS%% *}")
for values in "${CHART}"/ci/*-values.yaml; do
  release="$(basename "${values}" -values.yaml)"
  if ! "${HELM}" lint --strict "${HELM_KUBE[@]}" "${CHART}" -f "${values}" > "${WORK}/lint-${release}.log" 2>&1; then
    log "FAIL helm lint -f ${values#"${ROOT}"/}:"; cat "${WORK}/lint-${release}.log" >&2; status=1
  fi
  if ! "${HELM}" template "${release}" "${CHART}" "${HELM_KUBE[@]}" -f "${values}" > "${WORK}/build-helm-${release}.yaml" 2> "${WORK}/helm-${release}.err"; then
    log "FAIL helm template -f ${values#"${ROOT}"/}:"; cat "${WORK}/helm-${release}.err" >&2; status=1
  fi
done
# Values the chart must refuse, with the reason it gives (schema or template guard).
expect_refused() {
  local why="$1"; shift
  local out
  if out="$("${HELM}" template refused "${CHART}" "${HELM_KUBE[@]}" "$@" 2>&1)"; then
    log "FAIL helm template $* was accepted; expected a refusal mentioning '${why}'"; status=1
  elif ! grep -q -- "${why}" <<<"${out}"; then
    log "FAIL helm template $* refused without saying '${why}':"; echo "${out}" >&2; status=1
  else
    log "ok   helm refuses $*"
  fi
}
expect_refused "Unix socket accepts connections from its own user only" --set trainer.runAsUser=1000
expect_refused "runAsUser" --set sidecar.runAsUser=0
expect_refused "transport" --set transport=http
expect_refused "needs job.completionMode: Indexed" --set job.parallelism=2 --set 'journal.accessModes={ReadWriteMany}'
expect_refused "is not a file inside the chart" --set "prometheusRule.ruleFiles={files/missing.yaml}"

# The chart's alert rules: promtool (Debian's prometheus package) checks them and runs their unit
# tests (k8s/helm/trainguard/ci/alerts.promtest.yaml) on the rules as the chart renders them.
if ! command -v promtool >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  log "installing promtool (Debian prometheus)"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi
if command -v promtool >/dev/null 2>&1; then
  "${VENV}/bin/python" - "${WORK}/build-helm-default.yaml" "${WORK}/rules.yaml" <<'PY' || status=1
import sys, yaml
rules = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
assert len(rules) == 1, f"expected one PrometheusRule in the default render, found {len(rules)}"
yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
PY
  cp "${CHART}/ci/alerts.promtest.yaml" "${WORK}/"
  if (cd "${WORK}" && promtool check rules rules.yaml >&2 && promtool test rules alerts.promtest.yaml >&2); then
    log "ok   promtool check/test rules of the chart's PrometheusRule"
  else
    log "FAIL promtool on the chart's PrometheusRule"; status=1
  fi
else
  log "FAIL no promtool: apt-get install prometheus"; status=1
fi

# Pod Security "restricted" on every rendered pod template, by the Kubernetes project's policy
# code; the negative control proves the check can fail.
if ! "${BIN}/psa-check" -level restricted -versions latest,v1.29 "${WORK}"/build-*.yaml > "${WORK}/psa.log"; then
  grep -v '^ok' "${WORK}/psa.log" >&2 || true; status=1
fi
log "$(tail -1 "${WORK}/psa.log")"
control="$("${BIN}/psa-check" "${ROOT}/k8s/psa-check/testdata/violating-pod.yaml" | tail -1 || true)"
if [[ "${control}" != "psa-check: 2 pod templates, 2 violations of restricted" ]]; then
  log "FAIL psa-check's negative control (k8s/psa-check/testdata/violating-pod.yaml): '${control}'"; status=1
fi

# Plain resource files of the base are validated on their own too (kustomization.yaml,
# patch-*.yaml and the overlays' patches are partial objects, covered by the builds above; the
# component's sidecar.yaml is part of a pod, covered by the builds of the base and the examples).
RESOURCES=()
while IFS= read -r f; do RESOURCES+=("${f}"); done < <(
  find "${ROOT}/k8s/base" -name '*.yaml' ! -name kustomization.yaml ! -name 'patch-*.yaml' | sort)

"${VENV}/bin/python" - "${ROOT}" "${K8S_VERSIONS}" "${WORK}"/build-*.yaml "${RESOURCES[@]}" <<'PY' || status=1
import json, os, sys
import yaml, jsonschema, kubernetes_validate as kv
from referencing import Registry, Resource

root, versions, files = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
crd_schemas = {}
for name in os.listdir(os.path.join(root, "k8s", "schemas")):
    with open(os.path.join(root, "k8s", "schemas", name)) as fh:
        schema = json.load(fh)
    props = schema["properties"]
    crd_schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema

# The CRD subsets refer to the Kubernetes API's own definitions for embedded pod/Job templates.
kv_dir = os.path.join(os.path.dirname(kv.__file__), "kubernetes-json-schema")
k8s_defs = {}
for v in versions:
    with open(os.path.join(kv_dir, f"v{v}-local-strict", "_definitions.json")) as fh:
        k8s_defs[v] = Resource.from_contents(json.load(fh))

def validate_crd(doc, schema):
    for v in versions:
        registry = Registry().with_resource(k8s_defs[v].id(), k8s_defs[v])
        jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)

def pod_specs(node):
    """Pod specs wherever a workload nests them (Job, JobSet, PyTorchJob, Trainer runtime...)."""
    if isinstance(node, dict):
        spec = node.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("containers"), list):
            yield spec
            return
        for v in node.values():
            yield from pod_specs(v)
    elif isinstance(node, list):
        for v in node:
            yield from pod_specs(v)

def semantic_problems(doc):
    """Rules the API server enforces but the OpenAPI schemas do not encode (enums)."""
    for pod in pod_specs(doc):
        job_pods = doc.get("kind") in ("Job", "JobSet", "TrainingRuntime", "ClusterTrainingRuntime")
        allowed = {"OnFailure", "Never"} if job_pods else {"Always", "OnFailure", "Never"}
        if pod.get("restartPolicy") not in allowed | {None}:
            yield f"pod restartPolicy {pod.get('restartPolicy')!r} not in {sorted(allowed)}"
        for c in pod.get("initContainers") or []:
            if c.get("restartPolicy") not in (None, "Always"):
                yield f"init container {c.get('name')}: restartPolicy must be Always (native sidecar) or unset"
        for c in pod.get("containers") or []:
            if "restartPolicy" in c:
                yield f"container {c.get('name')}: restartPolicy is only allowed on init containers"
        volumes = {v.get("name") for v in pod.get("volumes") or []}
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    yield f"container {c.get('name')}: volumeMount {m.get('name')!r} names no volume of the pod"

failures = checked = 0
for path in files:
    name = os.path.basename(path)[6:-5]
    label = os.path.relpath(path, root) if path.startswith(root) else (
        "helm template " + name[5:] if name.startswith("helm-") else "kustomize build " + name)
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    if not docs:
        print(f"FAIL {label}: no objects"); failures += 1
    for doc in docs:
        ident = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        try:
            if key in crd_schemas:
                validate_crd(doc, crd_schemas[key])
                mode = "CRD subset schema, k8s " + "/".join(versions)
            else:
                for v in versions:
                    kv.validate(doc, v, strict=True)
                mode = "k8s " + "/".join(versions)
            for problem in semantic_problems(doc):
                raise jsonschema.ValidationError(problem)
            checked += 1
            print(f"ok   {label}: {ident} ({mode})")
        except kv.SchemaNotFoundError:
            failures += 1
            print(f"FAIL {label}: {ident}: no schema for {key[0]} {key[1]} (add one to k8s/schemas/)")
        except (kv.ValidationError, jsonschema.ValidationError) as e:
            failures += 1
            where = "/".join(str(p) for p in e.absolute_path) or "(semantics)"
            print(f"FAIL {label}: {ident}: at {where}: {e.message}")
print(f"validate-k8s: {checked} objects valid, {failures} invalid")
sys.exit(1 if failures else 0)
PY
exit "${status}"
