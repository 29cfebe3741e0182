"""Live `train_grpo --cpu` runs for the tests here: one subprocess per run with its own Ray
(`RAY_TMPDIR` under the `ray_tmp` fixture, whose teardown kills what is left, by process id),
its output read while it runs, and an undisturbed replay of the groups its memory logged."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

PROMPTS, SAMPLES = 4, 8  # the same 4 prompts every step, so mistakes come back


def run_argv(task: dict, out: str, episodes: int, save_steps: int, shards: int = 2, extra=()) -> list[str]:
    """`train_grpo --cpu` on the SFT model: `episodes` steps over the same PROMPTS prompts."""
    from openrlhf_meds.cpu.launch import PPO_CPU_FLAGS
    from openrlhf_meds.demo.sft import grpo_argv

    argv = grpo_argv(
        task["sft_model"], task["prompts"], task["reward"], out, steps=1, prompts_per_step=PROMPTS, max_new_tokens=48
    )[: -len(PPO_CPU_FLAGS)]
    argv += ["--train.num_episodes", str(episodes), "--ckpt.save_steps", str(save_steps)]
    argv += ["--logger.tensorboard_dir", os.path.join(out, "tb"), "--logger.logging_steps", "1"]
    argv += ["--meds.memory_shards", str(shards), "--meds.memory_dir", os.path.join(out, "meds_state")]
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
    """The run's tensorboard scalars: {tag: {step: value}}."""
    from openrlhf_meds.demo.main import read_scalars

    return {tag: dict(points) for tag, points in read_scalars(os.path.join(out, "tb")).items()}


def replay(wal_dirs: list[str], steps: list[int], snapshot: str | None = None) -> dict:
    """What an undisturbed memory gives the logged groups of each memory step in `steps`, in
    order: from the training snapshot `snapshot` (all shards in one ErrorMemory; default an
    empty memory), one reference step per memory step over its groups, read back from the
    shards' write-ahead logs. {step: {"sizes", "penalties", "shard"}} (rollout order)."""
    from openrlhf_meds.meds.config import MedsConfig
    from openrlhf_meds.meds.memory import ErrorMemory
    from openrlhf_meds.memory.wal import ShardLog, read_manifest, unpack_group

    if snapshot is None:
        memory = ErrorMemory(MedsConfig())
    else:
        _, files = read_manifest(snapshot)
        memory = ErrorMemory.load(files[0])
        for path in files[1:]:
            memory.absorb(ErrorMemory.load(path))
    logged = [(shard, r) for shard, wal in enumerate(wal_dirs) for _, r in ShardLog(wal).replay(0)]
    groups = [(shard, unpack_group(r)) for shard, r in logged if r[0] == "G"]  # "F": fetches
    out = {}
    for step in steps:
        mine = [(shard, g) for shard, g in groups if g[2] == step]
        keys = [g[1] for _, g in mine for _ in range(len(g[3]))]
        sizes, pens = memory.step(
            keys, np.concatenate([g[3] for _, g in mine]), np.concatenate([g[4] for _, g in mine])
        )
        out[step] = {"sizes": sizes, "penalties": pens, "shard": np.array([s for s, g in mine for _ in g[3]])}
    return out


@pytest.fixture
def live_run():
    """The helpers above, for the live-run tests."""
    return SimpleNamespace(PROMPTS=PROMPTS, SAMPLES=SAMPLES, argv=run_argv, Run=Run, scalars=scalars, replay=replay)
