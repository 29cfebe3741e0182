#!/usr/bin/env bash
# DAPO baseline: the same run without MEDS (through the same entry point).
#   DATA=/data/dapo-math-17k.jsonl bash examples/scripts/train_dapo_qwen2.5_math_7b.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-dapo_qwen2.5_math_7b}
source "$(dirname "$0")/common_qwen2.5_math_7b.sh"
launch "${DAPO[@]}" --meds.enable false
