#!/usr/bin/env bash
# Regenerate the gRPC stubs for containerd's snapshots API and the CRI subset (committed; run after editing .proto).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python  # grpcio-tools: a test extra (scripts/setup.sh)
cd lazypull/service/proto
$PY -m grpc_tools.protoc -I. --python_out=. mount.proto
$PY -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. snapshots.proto
# Make the generated imports package-relative.
sed -i 's/^import mount_pb2 as/from lazypull.service.proto import mount_pb2 as/' snapshots_pb2.py
sed -i 's/^import snapshots_pb2 as/from lazypull.service.proto import snapshots_pb2 as/' snapshots_pb2_grpc.py
# Kubernetes' CRI (the subset lazypull speaks).
cd ../cri/proto
python3 -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. api.proto
sed -i 's/^import api_pb2 as/from lazypull.service.cri.proto import api_pb2 as/' api_pb2_grpc.py
