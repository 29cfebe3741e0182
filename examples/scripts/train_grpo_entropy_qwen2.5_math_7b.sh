#!/usr/bin/env bash
# GRPO with entropy adjustment: the GRPO baseline with dual-clip 10, 3072-token responses,
# 16 prompts per mini-batch (32 updates a step), weight decay 0.1, 10 warm-up steps, and the
# per-token advantage bonus A_t += min(0.4 * H_t, |A_t| / 2) (H_t the policy's entropy at
# token t, detached; openrlhf_meds/integration/entropy_advantage.py). --actor.entropy_coef 0
# makes OpenRLHF compute H_t without adding an entropy loss.
#   DATA=... EVAL_DATA=... bash examples/scripts/train_grpo_entropy_qwen2.5_math_7b.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-grpo_entropy_qwen2.5_math_7b}
source "$(dirname "$0")/common_qwen2.5_math_7b.sh"
launch grpo_entropy "${REASONS[@]}" "${GRPO_REASONS[@]}" "${WARMUP_REASONS[@]}" -- "${GRPO[@]}" \
  --actor.dual_clip 10 \
  --rollout.max_new_tokens 3072 --data.max_len 4096 --vllm.max_num_batched_tokens 4096 \
  --train.batch_size 256 \
  --actor.adam.weight_decay 0.1 \
  --actor.lr_scheduler constant_with_warmup --actor.lr_warmup_ratio "$(warmup_ratio 10 256)" \
  --actor.entropy_coef 0 --entropy_adv.coef 0.4 --entropy_adv.kappa 2
