#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf code from proto/. Never edit the output by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=src/consortium/transport/proto
mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -I proto \
  --python_out="$OUT" --grpc_python_out="$OUT" --pyi_out="$OUT" \
  proto/consortium/v1/fleet.proto
# protoc writes a package tree mirroring the proto path; flatten it
mv "$OUT"/consortium/v1/* "$OUT"/ && rm -rf "$OUT"/consortium
# make the generated import relative to our package
sed -i 's/^from consortium.v1 import fleet_pb2 as/from consortium.transport.proto import fleet_pb2 as/' "$OUT"/fleet_pb2_grpc.py
cat > "$OUT/__init__.py" <<'PY'
"""Generated protobuf/gRPC code for proto/consortium/v1/fleet.proto (scripts/gen_proto.sh)."""
PY
echo "generated into $OUT"
