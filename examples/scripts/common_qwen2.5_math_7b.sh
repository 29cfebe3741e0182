# Shared settings of the paper's runs, sourced by train_{meds,dapo,grpo}_qwen2.5_math_7b.sh:
# Qwen2.5-Math-7B on DAPO-Math-17K (+ MATH levels 3-5), 512 prompts x 16 rollouts per step,
# prompt <= 1024 and response <= 3072 tokens, lr 1e-6, no KL, Qwen-Math prompt template.
#
# Environment: DATA (required: jsonl/parquet with "prompt" and "label" columns, the label
# being the reference answer), MODEL, SAVE (checkpoints/logs root), NUM_NODES (8 GPUs each),
# RAY_ADDRESS (the dashboard, default http://127.0.0.1:8265), DRY_RUN=1 (check the flags and
# print the resolved configuration, start nothing), EXTRA_ARGS (appended flags).

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
MODEL=${MODEL:-Qwen/Qwen2.5-Math-7B}
DATA=${DATA:-}
SAVE=${SAVE:-$PWD/runs/$RUN_NAME}
NUM_NODES=${NUM_NODES:-1}
RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
if [ -z "$DATA" ] && [ "${DRY_RUN:-0}" != 1 ]; then
  echo "error: set DATA to the DAPO-Math-17K prompts (jsonl/parquet with prompt and label columns)" >&2
  exit 2
fi

COMMON=(
  --actor.model_name_or_path "$MODEL"
  --data.prompt_dataset "${DATA:-dapo-math-17k.jsonl}"
  --data.input_key prompt --data.label_key label
  --data.input_template $'<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n'
  --reward.remote_url "$here/reward_math.py"
  --rollout.batch_size 512 --rollout.n_samples_per_prompt 16
  --rollout.max_new_tokens 3072 --data.max_len 4096
  --rollout.temperature 1.0 --rollout.micro_batch_size 16
  --train.batch_size 512 --train.micro_batch_size 4 --train.max_epochs 1 --train.num_episodes 10
  --actor.adam.lr 1e-6 --algo.kl.init_coef 0
  --actor.num_nodes "$NUM_NODES" --actor.num_gpus_per_node 8
  --vllm.num_engines $((8 * NUM_NODES)) --vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.6
  --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
  --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable --ds.packing_samples
  --ckpt.path "$SAVE/ckpt" --ckpt.output_dir "$SAVE/model" --ckpt.save_steps 20 --ckpt.max_num 3
  --logger.tensorboard_dir "$SAVE/tensorboard" --logger.logging_steps 1
)
# DAPO: clip-higher, dynamic filtering on raw scores (all-right / all-wrong groups dropped),
# overlong penalty over the last 512 tokens of the 3072 budget.
DAPO=(
  --actor.eps_clip_low_high 0.2 0.28
  --algo.dynamic_filtering_enable --algo.dynamic_filtering_range 0.0 1.0
  --reward.overlong_buffer_len 512 --reward.overlong_penalty_factor 1.0
)

# Run openrlhf_meds.train_grpo with COMMON + the given flags (+ EXTRA_ARGS), through
# `ray job submit`, or directly with --dry_run when DRY_RUN=1.
launch() {
  # shellcheck disable=SC2206
  local extra=(${EXTRA_ARGS:-})
  if [ "${DRY_RUN:-0}" = 1 ]; then
    (cd "$repo" && "${PYTHON:-python}" -m openrlhf_meds.train_grpo "${COMMON[@]}" "$@" "${extra[@]}" --dry_run)
  else
    mkdir -p "$SAVE"
    ray job submit --address "$RAY_ADDRESS" --runtime-env "$repo/ray_configs/runtime_env.yaml" \
      -- python -m openrlhf_meds.train_grpo "${COMMON[@]}" "$@" "${extra[@]}" 2>&1 | tee "$SAVE/train.log"
  fi
}
