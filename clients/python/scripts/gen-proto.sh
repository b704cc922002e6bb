#!/usr/bin/env bash
# Regenerates trainguard/_proto/trainguard/v1/trainguard_pb2.py from proto/trainguard/v1/*.proto.
# Uses grpcio-tools 1.51 (bundled protoc 3.21) in a throwaway venv: its output runs on protobuf
# 3.21 (Debian bookworm) and on current protobuf; newer protoc adds a runtime version check that
# refuses 3.21. Only *_pb2.py is generated: the gRPC stubs are written by hand in transport.py.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
GEN_VENV="${TRAINGUARD_PROTOGEN_VENV:-/tmp/protogen-venv}"
if ! "$GEN_VENV/bin/python" -c 'import grpc_tools' 2>/dev/null; then
  python3 -m venv "$GEN_VENV"
  "$GEN_VENV/bin/pip" install --prefer-binary "grpcio-tools==1.51.3"
fi
OUT="$REPO/clients/python/trainguard/_proto"
mkdir -p "$OUT/trainguard/v1"
"$GEN_VENV/bin/python" -m grpc_tools.protoc -I "$REPO/proto" --python_out="$OUT" \
  "$REPO/proto/trainguard/v1/trainguard.proto"
for d in "$OUT" "$OUT/trainguard" "$OUT/trainguard/v1"; do [ -f "$d/__init__.py" ] || : > "$d/__init__.py"; done
echo "generated $OUT/trainguard/v1/trainguard_pb2.py"
