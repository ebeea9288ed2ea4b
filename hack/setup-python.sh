#!/usr/bin/env bash
# Create .venv with Tradewind and its tools. Wheels are cached by pip outside the repo
# (~/.cache/pip), so a second run is fast. Usage: hack/setup-python.sh [EXTRAS]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-operator,trainer,dev}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Tradewind needs Python >= 3.11 (found $("$python" --version 2>&1)); set PYTHON=" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
echo "ready: $(.venv/bin/tradewind version)"
