"""The CPU demo (`python -m openrlhf_meds.demo`): `main` (SFT + train_grpo with MEDS, summary,
curves), `sft` (the tiny model taught the answer format with OpenRLHF's SFT), `task` (the task, "which
is the largest of a, b and c?", and its reward file), `toy` (Qwen's real tokenizer built
offline, tiny random Qwen2 models, also used by the tests), `turns` (runs taking turns step by
step, for the side-by-side timing)."""
