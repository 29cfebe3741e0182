#!/usr/bin/env bash
# The GRPO baseline (see GRPO in common_qwen2.5_math_7b.sh): clip 0.2 / 0.2, dual-clip 3, a
# 0.001 k3 KL loss, seq-mean-token-mean, 7168-token responses, no filtering, no MEDS.
#   DATA=... EVAL_DATA=... bash examples/scripts/train_grpo_qwen2.5_math_7b.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-grpo_qwen2.5_math_7b}
source "$(dirname "$0")/common_qwen2.5_math_7b.sh"
launch grpo "${REASONS[@]}" "${GRPO_REASONS[@]}" -- "${GRPO[@]}"
