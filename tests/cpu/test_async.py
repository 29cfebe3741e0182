"""`train_grpo --cpu --train.async_enable` with MEDS (OpenRLHF's PPOTrainerAsync: the next
batch is generated while the trainer trains on the current one), 3 steps of the tiny model
over the same 4 prompts (about 1.5 minutes). The semantics (integration/async_trainer.py): a
group's memory step is its batch's index, and each group is assigned against the memory as it
is when it arrives; checked by replaying the logged groups through an undisturbed memory."""

from __future__ import annotations

import glob

import pytest

pytestmark = pytest.mark.slow


def test_async_training_with_meds(sft_model, ray_tmp, tmp_path, live_run):
    out = str(tmp_path / "grpo")
    cmd = live_run.argv(sft_model, out, episodes=3, save_steps=100, shards=1, extra=["--train.async_enable"])
    log = live_run.Run(cmd, str(tmp_path / "run.log"), ray_tmp).finish()
    assert all(f"MEDS step {s}: " in log for s in (1, 2, 3)), log[-5000:]
    m = live_run.scalars(out)
    assert sorted(m["train/meds/memory_vectors"]) == [1, 2, 3]
    # Batch b carries memory step b (trained as step b + 1), whatever the trainer was doing
    # when its groups finished: each batch's 32 rollouts under one step, none twice.
    wal = sorted(glob.glob(f"{out}/meds_state/shard-*"))
    ref = live_run.replay(wal, [0, 1, 2])
    n = live_run.PROMPTS * live_run.SAMPLES
    assert [len(ref[s]["penalties"]) for s in (0, 1, 2)] == [n, n, n]
    for s in (0, 1, 2):  # the penalties the trainer shaped with == the undisturbed memory's
        assert m["train/meds/penalty_mean"][s + 1] == pytest.approx(ref[s]["penalties"].mean(), rel=1e-5, abs=1e-9)
        assert m["train/meds/frac_penalized"][s + 1] == pytest.approx((ref[s]["penalties"] > 0).mean(), abs=1e-6)
    assert m["train/meds/frac_penalized"][1] == 0 and max(m["train/meds/frac_penalized"][s] for s in (2, 3)) > 0
    assert m["train/div/pass@8"].keys() == {1, 2, 3}
