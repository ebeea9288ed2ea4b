#!/usr/bin/env bash
# Everything a fresh machine needs: the Python environment (.venv) and the binaries of the
# local stack (etcd, Kubernetes, kwok, helm, MinIO), each cached outside the repo by version.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup-python.sh "${1:-operator,trainer,dev}"
hack/build-binaries.sh
