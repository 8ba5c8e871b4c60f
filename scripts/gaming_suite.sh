#!/usr/bin/env bash
# The gaming suite on one task (docs/protocol.md §8): adversarial submissions, the top-tokens baseline and
# its shuffled control are written, evaluated and compared; the report goes to docs/gaming-<task>.md and the
# results to gaming-results/<task>/ (outside results/, so the adversarial rows stay off the task leaderboard). Exit 1 if an adversarial submission scores above the control.
#   scripts/gaming_suite.sh smollm2-135m-l8-offline-mini [extra `harness gaming` options, e.g. --backend prefix]
set -euo pipefail
cd "$(dirname "$0")/.."
task="${1:?usage: scripts/gaming_suite.sh TASK [harness gaming options]}"
shift
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HARNESS_THREADS="${HARNESS_THREADS:-1}"
# The project's environment when there is one (as scripts/mini_baselines.sh), else whatever python is active.
PY=${PYTHON:-python}
[ -n "${PYTHON:-}" ] || [ ! -x .venv/bin/python ] || PY=.venv/bin/python
exec "$PY" -m harness.cli gaming --task "$task" --submissions "submissions/gaming/$task" \
  --results gaming-results -o "docs/gaming-$task.md" "$@"
