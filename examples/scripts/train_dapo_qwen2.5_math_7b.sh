#!/usr/bin/env bash
# The DAPO baseline: the MEDS run without MEDS, through the same entry point.
#   DATA=... EVAL_DATA=... bash examples/scripts/train_dapo_qwen2.5_math_7b.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-dapo_qwen2.5_math_7b}
source "$(dirname "$0")/common_qwen2.5_math_7b.sh"
launch dapo "${REASONS[@]}" "${DAPO_REASONS[@]}" -- "${DAPO[@]}" --meds.enable false
