"""`train_grpo --cpu --train.async_enable` with MEDS (OpenRLHF's PPOTrainerAsync: the next
batch is generated while the trainer trains on the current one), over the same 4 prompts: 3
steps with an evaluation after each and a checkpoint at step 2, then a resume for 1 more step
(about 3 minutes). The semantics (integration/async_trainer.py): a group's memory step is its
batch's index, each group is assigned against the memory as it is when it arrives, and the
memory of checkpoint s holds batches 0..s-1 only (a resumed run regenerates batch s)."""

from __future__ import annotations

import glob
import os

import pytest

pytestmark = pytest.mark.slow


def test_async_training_with_meds_checkpoints_and_resumes(sft_model, ray_tmp, tmp_path, live_run):
    out = str(tmp_path / "grpo")
    n = live_run.PROMPTS * live_run.SAMPLES
    evaluation = ["--eval.dataset", sft_model["prompts"], "--eval.steps", "1", "--eval.n_samples_per_prompt", "4"]
    argv = live_run.argv(
        sft_model, out, episodes=3, save_steps=2, shards=1, extra=["--train.async_enable", *evaluation]
    )
    log = live_run.Run(argv, str(tmp_path / "run1.log"), ray_tmp).finish()
    assert all(f"MEDS step {s}: " in log for s in (1, 2, 3)), log[-5000:]
    m = live_run.scalars(out)

    # The snapshot of step 2 holds exactly batches 0 and 1: every rollout with a feature.
    from openrlhf_meds.memory.wal import read_manifest

    snapshot = os.path.join(out, "ckpt", "meds_memory", "global_step2")
    saved, _ = read_manifest(snapshot)
    assert saved["vectors"] == sum(round(n * (1 - m["train/meds/no_feature_frac"][s])) for s in (1, 2))
    # It was taken before batch 2 reached the memory: the log after it holds all of batch 2
    # (memory step 2, one step for the whole batch; evaluation rollouts are not logged).
    ref = live_run.replay(sorted(glob.glob(f"{out}/meds_state/shard-*")), [2], snapshot=snapshot)[2]
    assert len(ref["penalties"]) == n
    # The penalties the trainer shaped step 3 with == an undisturbed memory's on the same rollouts.
    assert m["train/meds/penalty_mean"][3] == pytest.approx(ref["penalties"].mean(), rel=1e-5, abs=1e-9)
    assert m["train/meds/frac_penalized"][3] == pytest.approx((ref["penalties"] > 0).mean(), abs=1e-6)
    assert m["train/meds/frac_penalized"][1] == 0 and m["train/meds/frac_penalized"][3] > 0
    # The generator's evaluations log the same metrics as a sync run's, unbiased pass@k included.
    evals = [s for s in m.get("eval/eval_default_pass@1", {})]
    assert evals, sorted(t for t in m if t.startswith("eval/"))
    s = evals[-1]
    assert m["eval/eval_default_pass@4"][s] == pytest.approx(m["eval/eval_default_pass4"][s], abs=1e-6)

    # Resume from step 2: the memory of batches 0-1 comes back and batches 2-3 are generated again.
    argv = live_run.argv(
        sft_model, out, episodes=4, save_steps=2, shards=1, extra=["--train.async_enable", "--ckpt.load_enable"]
    )
    log = live_run.Run(argv, str(tmp_path / "run2.log"), ray_tmp).finish()
    assert f"global_step2 ({saved['vectors']} vectors)" in log and "MEDS: memory restored from" in log
    assert "MEDS step 3: " in log and "MEDS step 4: " in log and "MEDS step 2: " not in log
