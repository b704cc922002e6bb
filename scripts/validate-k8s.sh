#!/usr/bin/env bash
# Validates every Kubernetes manifest under k8s/ offline, and the kustomize build of the base and
# of each overlay, against the Kubernetes API's JSON schemas (strict: unknown fields fail).
# CRDs (PodMonitor) have no built-in schema: they are checked against the subset schemas in
# k8s/schemas/. Exits non-zero on any invalid manifest, unknown kind or failed kustomize build.
#
# Tools (installed once, cached outside the repo in $TRAINGUARD_TOOLS, default ~/.cache/trainguard):
#   kubernetes-validate (PyPI; ships the API schemas of Kubernetes 1.25..1.37) in a venv,
#   kustomize v5 (Go module proxy, `go install`), falling back to `kubectl kustomize`.
# Usage: scripts/validate-k8s.sh            (K8S_VERSIONS="1.29.0 1.33.0 1.37.0" by default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TRAINGUARD_TOOLS:-${HOME}/.cache/trainguard}"
KV_VERSION="1.37.0"
KUSTOMIZE_VERSION="v5.7.1"
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

ensure_python_tools
KUSTOMIZE="$(kustomize_cmd)"
log "kustomize: ${KUSTOMIZE}; schemas: Kubernetes ${K8S_VERSIONS}"

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

# Render the base and every overlay; a failing build is itself an error.
status=0
for dir in "${ROOT}"/k8s/base "${ROOT}"/k8s/overlays/*/; do
  dir="${dir%/}"
  name="$(basename "$(dirname "${dir}")")-$(basename "${dir}")"
  if ! ${KUSTOMIZE} "${dir}" > "${WORK}/build-${name}.yaml" 2> "${WORK}/build-${name}.err"; then
    log "FAIL kustomize build ${dir#"${ROOT}"/}:"; cat "${WORK}/build-${name}.err" >&2; status=1
  fi
done

# Plain resource files of the base are validated on their own too (kustomization.yaml and the
# overlays' patches are partial objects, covered by the builds above).
RESOURCES=()
while IFS= read -r f; do RESOURCES+=("${f}"); done < <(
  find "${ROOT}/k8s/base" -name '*.yaml' ! -name kustomization.yaml | sort)

"${VENV}/bin/python" - "${ROOT}" "${K8S_VERSIONS}" "${WORK}"/build-*.yaml "${RESOURCES[@]}" <<'PY' || status=1
import json, os, sys
import yaml, jsonschema, kubernetes_validate as kv

root, versions, files = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
crd_schemas = {}
for name in os.listdir(os.path.join(root, "k8s", "schemas")):
    with open(os.path.join(root, "k8s", "schemas", name)) as fh:
        schema = json.load(fh)
    props = schema["properties"]
    crd_schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema

def pod_specs(doc):
    """Pod specs inside a Job/Deployment/... (and bare Pods)."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        yield spec
    elif isinstance(spec.get("template"), dict):
        yield spec["template"].get("spec") or {}

def semantic_problems(doc):
    """Rules the API server enforces but the OpenAPI schemas do not encode (enums)."""
    for pod in pod_specs(doc):
        allowed = {"OnFailure", "Never"} if doc.get("kind") == "Job" else {"Always", "OnFailure", "Never"}
        if pod.get("restartPolicy") not in allowed | {None}:
            yield f"pod restartPolicy {pod.get('restartPolicy')!r} not in {sorted(allowed)}"
        for c in pod.get("initContainers") or []:
            if c.get("restartPolicy") not in (None, "Always"):
                yield f"init container {c.get('name')}: restartPolicy must be Always (native sidecar) or unset"
        for c in pod.get("containers") or []:
            if "restartPolicy" in c:
                yield f"container {c.get('name')}: restartPolicy is only allowed on init containers"

failures = checked = 0
for path in files:
    label = os.path.relpath(path, root) if path.startswith(root) else "kustomize build " + os.path.basename(path)[6:-5]
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    if not docs:
        print(f"FAIL {label}: no objects"); failures += 1
    for doc in docs:
        ident = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        try:
            if key in crd_schemas:
                jsonschema.validate(doc, crd_schemas[key])
                mode = "CRD subset schema"
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
