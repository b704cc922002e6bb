#!/usr/bin/env bash
# Sets up the two Python stacks the trainguard client is tested on. Idempotent: re-running it on
# a machine where both stacks are already there only checks them.
#   (a) /opt/trainguard-venv: pyenv's (or PATH's) python3 + current torch 2.x from PyPI (CPU wheel
#       index is not reachable, so the plain PyPI wheel), grpcio, protobuf, pytest, safetensors, numpy.
#   (b) Debian bookworm's stack under /usr/bin/python3: torch 1.13, grpcio 1.51, protobuf 3.21.
# Usage: setup-envs.sh [venv|debian|all]   (default all; the two run in parallel)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLIENT_DIR="$(cd "$HERE/.." && pwd)"
VENV="${TRAINGUARD_VENV:-/opt/trainguard-venv}"
WHAT="${1:-all}"

setup_venv() {
  local py="${TRAINGUARD_VENV_PYTHON:-$(command -v python3)}"
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -m venv "$VENV"
  fi
  if "$VENV/bin/python" -c 'import torch, grpc, google.protobuf, pytest, safetensors, numpy, lightning, torchmetrics, transformers, accelerate' 2>/dev/null; then
    echo "[venv] $VENV already complete"
  else
    "$VENV/bin/python" -m pip install --upgrade pip >/dev/null
    # --prefer-binary: never build anything from source here.
    # lightning / transformers / accelerate: the framework integrations' tests (tiny models, no hub);
    # torchmetrics (a lightning dependency, named since the validation-audit tests import it)
    "$VENV/bin/python" -m pip install --prefer-binary torch grpcio protobuf pytest safetensors numpy \
      lightning torchmetrics transformers accelerate
  fi
  # The client itself, editable (pure Python; no build step beyond setuptools).
  "$VENV/bin/python" -m pip install --no-deps --no-build-isolation -e "$CLIENT_DIR" >/dev/null 2>&1 \
    || echo "[venv] editable install failed; run-tests.sh uses PYTHONPATH instead"
  "$VENV/bin/python" -c 'import torch, grpc, google.protobuf as p; print("[venv] torch", torch.__version__, "grpcio", grpc.__version__, "protobuf", p.__version__)'
}

setup_debian() {
  if /usr/bin/python3 -c 'import torch, grpc, google.protobuf, pytest, numpy' 2>/dev/null; then
    echo "[debian] already complete"
  else
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends python3-torch python3-grpcio python3-protobuf python3-pytest python3-numpy
  fi
  /usr/bin/python3 -c 'import torch, grpc, google.protobuf as p; print("[debian] torch", torch.__version__, "grpcio", grpc.__version__, "protobuf", p.__version__)'
}

case "$WHAT" in
  venv) setup_venv ;;
  debian) setup_debian ;;
  all)
    setup_venv > /tmp/trainguard-setup-venv.log 2>&1 & pv=$!
    setup_debian > /tmp/trainguard-setup-debian.log 2>&1 & pd=$!
    rc=0
    wait $pv || { echo "venv setup failed, see /tmp/trainguard-setup-venv.log"; rc=1; }
    wait $pd || { echo "debian setup failed, see /tmp/trainguard-setup-debian.log"; rc=1; }
    tail -n 1 /tmp/trainguard-setup-venv.log /tmp/trainguard-setup-debian.log
    exit $rc ;;
  *) echo "usage: $0 [venv|debian|all]" >&2; exit 2 ;;
esac
