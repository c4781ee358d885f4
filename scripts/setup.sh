#!/usr/bin/env bash
# Set up ConceptKit in a virtual environment (.venv): torch 2.13.0 only where torch is missing
# (the CPU build here; a node pack never pins torch itself), then the package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q torch==2.13.0
fi
.venv/bin/python -m pip install -q -e ".[test]"
