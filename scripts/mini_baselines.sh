#!/usr/bin/env bash
# Regenerate the offline mini task's committed baselines: the four explanation sets, their results, the
# leaderboard and docs/findings.md's table. Every step is cached or skipped when its output exists, so an
# interrupted run resumes (delete a file to redo it). 47 minutes measured on 2 AVX2 cores with other jobs beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${TASK:-smollm2-135m-l8-offline-mini}
H=${HARNESS:-.venv/bin/harness}
SUB=submissions/$TASK
mkdir -p "$SUB"
$H prepare --task "$TASK"
[ -f "$SUB/top-tokens.json" ] || $H explain --task "$TASK" --method top-tokens -o "$SUB/top-tokens.json"
[ -f "$SUB/llm.json" ] || $H explain --task "$TASK" --method llm -o "$SUB/llm.json"
[ -f "$SUB/empty.json" ] || $H explain --task "$TASK" --method empty -o "$SUB/empty.json"
[ -f "$SUB/shuffled-top-tokens.json" ] || \
  $H explain --task "$TASK" --method shuffled --submission "$SUB/top-tokens.json" --seed 0 -o "$SUB/shuffled-top-tokens.json"
for m in top-tokens shuffled-top-tokens llm empty; do
  # eval reuses every stored prediction, so a rerun after an interruption only computes what is missing
  $H eval --task "$TASK" --submission "$SUB/$m.json"
done
$H leaderboard --task "$TASK" --leaderboard leaderboard
$H findings --task "$TASK" --real top-tokens --control shuffled-top-tokens
