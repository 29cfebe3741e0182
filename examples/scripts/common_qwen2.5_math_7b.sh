# Shared settings of the official Qwen2.5-Math-7B runs (the official MEDS repository's run scripts),
# sourced by train_{meds,dapo,grpo,grpo_entropy}_qwen2.5_math_7b.sh. Each recipe maps every
# official value to OpenRLHF 0.11.2's flags; where OpenRLHF cannot express one, a --reason
# below says what differs and why. `DRY_RUN=1` checks this with `python -m openrlhf_meds.tools.check_recipe`:
# a table of setting, official value, this run; a difference without a reason fails.
#
# Environment:
#   DATA         training data, JSONL with "prompt" (the problem text) and "label" (the answer):
#                python -m openrlhf_meds.data prepare --dapo ... --math ... --levels 3-5 --out DATA
#                (DAPO-Math-17K processed + MATH lighteval levels 3-5; the official 7B run did not
#                deduplicate, so no --dedup)
#   EVAL_DATA    AIME 2024 as JSONL with "prompt", "label" and "datasource" (e.g. aime24, which
#                names the metrics eval_aime24_pass@1 ...)
#   NUM_PROMPTS  rows of DATA (counted when DATA is a .jsonl file); the warm-up is given to
#                OpenRLHF as a share of the run's optimizer updates, which depend on it
#   MODEL, SAVE (checkpoints/logs root), NUM_NODES (8 GPUs each), RAY_ADDRESS (the dashboard,
#   default http://127.0.0.1:8265), DRY_RUN=1 (check the flags and print the table, start
#   nothing), EXTRA_ARGS (appended flags; --cpu for a dry run on a machine without CUDA)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
MODEL=${MODEL:-Qwen/Qwen2.5-Math-7B}
DATA=${DATA:-}
EVAL_DATA=${EVAL_DATA:-}
SAVE=${SAVE:-$PWD/runs/$RUN_NAME}
NUM_NODES=${NUM_NODES:-1}
RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
if [ "${DRY_RUN:-0}" != 1 ]; then
  for var in DATA EVAL_DATA; do
    if [ -z "${!var}" ]; then
      echo "error: set $var (see the top of examples/scripts/common_qwen2.5_math_7b.sh)" >&2
      exit 2
    fi
  done
fi
if [ -z "${NUM_PROMPTS:-}" ] && [ -f "$DATA" ] && [[ "$DATA" == *.jsonl ]]; then
  NUM_PROMPTS=$(grep -c . "$DATA")
fi
if [ -z "${NUM_PROMPTS:-}" ]; then
  if [ "${DRY_RUN:-0}" != 1 ]; then
    echo "error: set NUM_PROMPTS to the number of rows of DATA ($DATA is not a .jsonl file to count)" >&2
    exit 2
  fi
  NUM_PROMPTS=20000 # a dry run without DATA: any size shows the mapping
  echo "dry run: NUM_PROMPTS=$NUM_PROMPTS assumed (no DATA to count)" >&2
fi

PROMPTS_PER_STEP=512
ROLLOUTS=16
EPOCHS=100

# --actor.lr_warmup_ratio for STEPS warm-up steps with TRAIN_BATCH rollouts per optimizer update.
# OpenRLHF warms up for ceil(max_steps * ratio) optimizer updates, where max_steps =
# NUM_PROMPTS * ROLLOUTS // TRAIN_BATCH * EPOCHS (prepare_datasets); half an update less than
# STEPS steps' worth keeps the ceil exact.
warmup_ratio() {
  awk -v n="$NUM_PROMPTS" -v s="$1" -v b="$2" -v p="$PROMPTS_PER_STEP" -v r="$ROLLOUTS" -v e="$EPOCHS" \
    'BEGIN { m = int(n * r / b) * e; printf "%.12g", (s * p * r / b - 0.5) / m }'
}

# The official prompt: system "Please reason step by step, and put your final answer within
# \boxed{}.", the problem as the user turn and an empty assistant turn, rendered by the chat
# template with a generation prompt. The same text as a template ({} is the problem, {{}} a
# literal {}); the dry run compares it with the model's own chat template when its tokenizer is
# on the machine. It also formats the EVAL_DATA problems.
TEMPLATE=$'<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n'

COMMON=(
  --actor.model_name_or_path "$MODEL"
  --data.prompt_dataset "${DATA:-dapo_math_17k_math_l3-5.jsonl}"
  --data.input_key prompt --data.label_key label --data.input_template "$TEMPLATE"
  # the official verifier: Hendrycks MATH equivalence of the last \boxed{} (mode="official")
  --reward.remote_url "$here/reward_math_official.py"
  --rollout.batch_size $PROMPTS_PER_STEP --rollout.n_samples_per_prompt $ROLLOUTS
  --rollout.temperature 1.0 --rollout.top_p 1.0
  --train.max_epochs 1 --train.num_episodes $EPOCHS
  --algo.advantage.estimator group_norm
  --actor.optim adam --actor.adam.lr 1e-6 --actor.adam.betas 0.9 0.999 --actor.max_norm 1.0
  --actor.policy_loss_type ppo
  # validation: AIME 2024 every 2 steps, mean@1 (the recipe sets the temperature)
  --eval.dataset "${EVAL_DATA:-aime24.jsonl}" --eval.steps 2 --eval.n_samples_per_prompt 1
  --meds.eval_before_training true
  --ckpt.save_steps 50 --ckpt.max_num 3 --ckpt.path "$SAVE/ckpt" --ckpt.output_dir "$SAVE/model"
  --logger.tensorboard_dir "$SAVE/tensorboard" --logger.logging_steps 1
  # the machines (no official value): 8 GPUs a node, everything colocated
  --actor.num_nodes "$NUM_NODES" --actor.num_gpus_per_node 8
  --vllm.num_engines $((8 * NUM_NODES)) --vllm.tensor_parallel_size 1
  # the official rollout engine: 1024 requests at once, 85% of the GPU (vLLM sleeps while DeepSpeed trains)
  --vllm.max_num_seqs 1024 --vllm.gpu_memory_utilization 0.85
  --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
  --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable --ds.packing_samples
  --rollout.micro_batch_size 16 --train.micro_batch_size 4
)

# Differences every Qwen2.5-Math-7B recipe has (SETTING=WHY; setting ids: openrlhf_meds/tools/official_runs.py).
REASONS=(
  --reason "advantage_eps=OpenRLHF's group_norm adds a fixed 1e-9 to the std. A group whose rewards are all equal gets advantage 0 either way; any other group of 16 rollouts scoring 0 or 1 has a std of at least ~0.2, where 1e-6 instead of 1e-9 changes the advantages by less than 5e-6 of their value"
  --reason "weight_decay_scope=OpenRLHF's DeepSpeed AdamW exempts biases and norm weights from weight decay (get_optimizer_grouped_parameters); the official optimizer decays every parameter, which shrinks those few by lr x decay of their value per update"
)
# The official warm-up ramps once per training step; OpenRLHF's scheduler only knows optimizer updates.
WARMUP_REASONS=(
  --reason "lr_warmup_granularity=the DeepSpeed engine steps OpenRLHF's scheduler at every optimizer update, so the 10 warm-up steps ramp the lr update by update (u/320 x 1e-6 at update u) instead of step by step (k/10 x 1e-6 at step k); the same length, the ramp about half a step ahead"
)

# DAPO: clip-higher, dual-clip, dynamic filtering on the raw scores (0 < mean < 1: groups all
# right or all wrong are dropped), overlong penalty over the last 512 tokens of the 3072.
DAPO=(
  --actor.eps_clip_low_high 0.2 0.28 --actor.dual_clip 10
  --actor.loss_agg_mode token-mean
  --algo.kl.init_coef 0
  --algo.dynamic_filtering_enable --algo.dynamic_filtering_range 0.0 1.0
  --reward.overlong_buffer_len 512 --reward.overlong_penalty_factor 1.0
  --rollout.max_new_tokens 3072 --data.max_len 4096 # prompt <= 4096 - 3072 = 1024, cut on the left
  --vllm.max_num_batched_tokens 4096                # an engine step: prompt + response tokens (official)
  --train.batch_size 256                            # 16 prompts x 16 rollouts: 32 updates a step
  --actor.adam.weight_decay 0.1
  --actor.lr_scheduler constant_with_warmup --actor.lr_warmup_ratio "$(warmup_ratio 10 256)"
  --eval.temperature 1.0
)
DAPO_REASONS=(
  "${WARMUP_REASONS[@]}"
  --reason "filter_refill=OpenRLHF 0.11.2 has no generation-batch loop: SamplesGenerator._generate_vllm replaces each dropped prompt by the next one until 512 groups are kept, with no limit. Each step trains on 512 groups of mixed raw scores as the official one does; which prompts a step sees differs, and a run never stops at 10 batches"
)

# GRPO (the baseline of the paper's GRPO runs): symmetric clip, dual-clip 3, no filtering, no
# overlong penalty, a k3 ("low-variance") KL loss against the reference model, every sequence
# weighing the same in the loss, 7168-token responses, 16 updates a step, no warm-up, greedy
# validation, no MEDS.
GRPO=(
  --actor.eps_clip_low_high 0.2 0.2 --actor.dual_clip 3
  --actor.loss_agg_mode seq-mean-token-mean
  --algo.kl.use_loss --algo.kl.init_coef 0.001 --algo.kl.estimator k3
  --ref.num_nodes "$NUM_NODES" --ref.num_gpus_per_node 8 # colocated with the actor
  --rollout.max_new_tokens 7168 --data.max_len 8192      # prompt <= 1024, cut on the left
  --vllm.max_num_batched_tokens 8192                     # prompt + response, as the DAPO runs
  --train.batch_size 512                                 # 32 prompts x 16 rollouts: 16 updates a step
  --actor.adam.weight_decay 0.01
  --actor.lr_scheduler constant
  --eval.temperature 0 # greedy
  --meds.enable false
)
GRPO_REASONS=(
  --reason "kl_loss_agg=OpenRLHF 0.11.2 averages the KL loss over all tokens (training_step calls aggregate_loss on it without --actor.loss_agg_mode); the official run aggregates it like the policy loss, seq-mean-token-mean. Only the KL term (coef 0.001) weighs a long response's tokens differently"
)

# Run the recipe: `launch RUN REASONS... -- FLAGS...`. RUN is the official run the dry run
# compares with (meds, dapo, grpo, grpo_entropy); FLAGS follow COMMON (later flags win) and
# EXTRA_ARGS follows them. Through `ray job submit`, or the check alone when DRY_RUN=1.
launch() {
  local run=$1
  shift
  local reasons=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    reasons+=("$1")
    shift
  done
  [ "${1:-}" = -- ] && shift
  # shellcheck disable=SC2206
  local extra=(${EXTRA_ARGS:-})
  if [ "${DRY_RUN:-0}" = 1 ]; then
    (cd "$repo" && "${PYTHON:-python}" -m openrlhf_meds.tools.check_recipe "$run" --num_prompts "$NUM_PROMPTS" \
      "${reasons[@]}" -- "${COMMON[@]}" "$@" "${extra[@]}")
  else
    mkdir -p "$SAVE"
    ray job submit --address "$RAY_ADDRESS" --runtime-env "$repo/ray_configs/runtime_env.yaml" \
      -- python -m openrlhf_meds.train_grpo "${COMMON[@]}" "$@" "${extra[@]}" 2>&1 | tee "$SAVE/train.log"
  fi
}
