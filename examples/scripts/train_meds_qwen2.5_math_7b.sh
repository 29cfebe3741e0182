#!/usr/bin/env bash
# MEDS as in the official run: the DAPO recipe plus the memory penalty (alpha 0.1, beta 0.2,
# last 14 layers, wrong rollouts; the qwen2.5-math-7b preset). 8xH100 per node.
#   DATA=/data/dapo-math-17k.jsonl bash examples/scripts/train_meds_qwen2.5_math_7b.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-meds_qwen2.5_math_7b}
source "$(dirname "$0")/common_qwen2.5_math_7b.sh"
launch "${DAPO[@]}" --meds.preset qwen2.5-math-7b --meds.memory_shards 4 --meds.memory_dir "$SAVE/meds_state"
