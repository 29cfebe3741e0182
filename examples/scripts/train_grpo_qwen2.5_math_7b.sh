#!/usr/bin/env bash
# GRPO baseline: group-normalised advantages, symmetric clip 0.2, no filtering, no overlong
# penalty, no MEDS.
#   DATA=/data/dapo-math-17k.jsonl bash examples/scripts/train_grpo_qwen2.5_math_7b.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-grpo_qwen2.5_math_7b}
source "$(dirname "$0")/common_qwen2.5_math_7b.sh"
launch --algo.advantage.estimator group_norm --actor.eps_clip 0.2 --meds.enable false
