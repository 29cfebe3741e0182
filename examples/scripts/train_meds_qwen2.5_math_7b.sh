#!/usr/bin/env bash
# MEDS as in the official run: the DAPO recipe plus the memory penalty (the qwen2.5-math-7b
# preset: alpha 0.1, beta 0.2, last 14 layers, wrong rollouts). 8 GPUs per node.
#   DATA=... EVAL_DATA=... bash examples/scripts/train_meds_qwen2.5_math_7b.sh
#   DRY_RUN=1 EXTRA_ARGS=--cpu bash examples/scripts/train_meds_qwen2.5_math_7b.sh   # the table only
set -euo pipefail
RUN_NAME=${RUN_NAME:-meds_qwen2.5_math_7b}
source "$(dirname "$0")/common_qwen2.5_math_7b.sh"
launch meds "${REASONS[@]}" "${DAPO_REASONS[@]}" \
  --reason "meds_clustering=exact: HDBSCAN(min_cluster_size=2, min_samples=1) on an exact minimum spanning tree, incremental, which gives the hdbscan package's labels up to ~1600 vectors per memory key (tests/meds/test_clustering.py): 100 epochs x 16 rollouts of a problem that appears once in DATA. --meds.clustering hdbscan calls the package as the official code does (approximate tree, bit-for-bit, far slower)" \
  -- "${DAPO[@]}" --meds.preset qwen2.5-math-7b --meds.memory_shards 4 --meds.memory_dir "$SAVE/meds_state"
