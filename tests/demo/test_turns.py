"""Runs taking turns step by step (`demo/turns.py`), in real processes sharing a directory, as
the demo's `train_grpo` runs do under `$OPENRLHF_MEDS_TURNS`."""

import json
import multiprocessing as mp
import os
import time

import pytest

from openrlhf_meds.demo.turns import TURNS_ENV, Turns


def _run(root: str, index: int, count: int, steps: int, log: str, start_delay: float = 0.0):
    """A run of `steps` steps: each appends (index, step, start, end) to `log`, as a trainer's
    step between two turns."""
    time.sleep(start_delay)  # a slow start-up: the others must wait for it
    turns = Turns(root, index, count)
    turns.start()
    try:
        for step in range(steps):
            t0 = time.time()
            time.sleep(0.02)  # the step's work
            with open(log, "a") as f:
                f.write(json.dumps([index, step, t0, time.time()]) + "\n")
            turns.hand_over()
            turns.wait()
    finally:
        turns.finish()


def _run_all(tmp_path, steps: list[int], delays: list[float]) -> list[list]:
    root, log = str(tmp_path / "turns"), str(tmp_path / "steps.jsonl")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_run, args=(root, i, len(steps), n, log, d)) for i, (n, d) in enumerate(zip(steps, delays))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return [json.loads(line) for line in open(log)]


def test_runs_alternate_step_by_step_and_never_overlap(tmp_path):
    # Run 1 starts late: run 0 must not take its first step before every run is ready.
    records = _run_all(tmp_path, steps=[4, 4, 4], delays=[0.0, 1.0, 0.0])
    # Rounds of one step each, every other round in reverse order.
    order = [0, 1, 2, 2, 1, 0] * 2
    assert [(i, step) for i, step, _, _ in records] == [(i, order[:k].count(i)) for k, i in enumerate(order)]
    for (_, _, _, end), (_, _, start, _) in zip(records, records[1:]):
        assert end <= start  # one run's step at a time
    assert records[0][2] >= os.path.getmtime(tmp_path / "turns" / "ready.1")


def test_a_finished_run_gives_up_its_turns(tmp_path):
    records = _run_all(tmp_path, steps=[1, 3, 2], delays=[0.0, 0.0, 0.0])
    assert [(i, step) for i, step, _, _ in records] == [(0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (1, 2)]


def test_a_dead_run_marked_done_passes_its_turn(tmp_path):
    # Run 1 holds the turn and dies; its supervisor writes done.1 and run 0 goes on.
    root = str(tmp_path)
    dead, alive = Turns(root, 1, 2), Turns(root, 0, 2)
    for turns in (dead, alive):
        open(os.path.join(root, f"ready.{turns.index}"), "w").close()
    alive._write(1)
    assert alive.owner(alive.taken()) == 1  # run 1's turn
    open(os.path.join(root, "done.1"), "w").close()
    alive.wait()  # returns: the dead run's turn passed on
    alive.hand_over()
    assert alive.owner(alive._next(alive.taken())) == 0  # only run 0 is left: its turn again


def test_the_order_is_reversed_every_other_round():
    turns = Turns("/nonexistent", 0, 2)
    assert [turns.owner(t) for t in range(8)] == [0, 1, 1, 0, 0, 1, 1, 0]
    assert [Turns("/nonexistent", 0, 3).owner(t) for t in range(6)] == [0, 1, 2, 2, 1, 0]


def test_env_spec(monkeypatch):
    monkeypatch.delenv(TURNS_ENV, raising=False)
    assert Turns.from_env() is None
    monkeypatch.setenv(TURNS_ENV, "/tmp/x:y:1:2")  # the directory may hold a colon
    turns = Turns.from_env()
    assert (turns.root, turns.index, turns.count) == ("/tmp/x:y", 1, 2)
    monkeypatch.setenv(TURNS_ENV, "/tmp/x:2:2")
    with pytest.raises(ValueError, match=TURNS_ENV):
        Turns.from_env()


def test_the_turn_taking_trainer_needs_meds_sync_trainer():
    """`train_grpo` refuses a sync trainer of its own where MEDS's sync trainer would not run."""
    import argparse

    from openrlhf_meds.cpu import patches

    patches.install()  # OpenRLHF's trainer modules import flash-attn's CUDA code otherwise

    from openrlhf_meds.demo.turns import _turn_taking_trainer
    from openrlhf_meds.integration.openrlhf import HIERARCHIZE, replacements
    from openrlhf_meds.meds.config import MedsConfig

    trainer = _turn_taking_trainer  # a function returning the class, called by the builder
    with pytest.raises(SystemExit, match="sync trainer extends MEDS's trainer.*keep --meds.diversity on"):
        replacements(MedsConfig(enable=False, diversity=False), sync_trainer=trainer)
    flags = {"reward.remote_url": "reward.py", "vllm.num_engines": 1, "train.async_enable": True}
    checked = replacements(MedsConfig(), sync_trainer=trainer)[HIERARCHIZE]
    with pytest.raises(SystemExit, match="sync trainer extends MEDS's sync trainer: drop --train.async_enable"):
        checked(argparse.Namespace(**flags))
    flags["train.async_enable"] = False
    assert checked(argparse.Namespace(**flags)).train.async_enable is False  # sync: parsed by OpenRLHF


def test_the_turns_entry_point_dry_runs_the_demos_flags_on_cpu(tmp_path):
    """`python -m openrlhf_meds.demo.turns` as the demo starts it (a fresh interpreter, the
    demo's DAPO flags): the turn-taking trainer class is made under CPU mode's patches (made
    before them, OpenRLHF's trainer module fails on flash-attn's CUDA import), every flag is
    checked, and the dry run prints the resolved configuration."""
    import subprocess
    import sys

    from openrlhf_meds.demo.main import train_argv

    task = {k: str(tmp_path / f"missing-{k}") for k in ("sft_model", "prompts", "reward")}
    argv = train_argv(task, str(tmp_path / "run"), 4, extra=["--algo.dynamic_filtering_enable"])
    run = subprocess.run(
        [sys.executable, "-m", "openrlhf_meds.demo.turns", *argv, "--dry_run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    resolved = json.loads(run.stdout[run.stdout.index("{\n") :])
    assert resolved["openrlhf"]["algo.dynamic_filtering_enable"] is True
    assert resolved["meds"]["enable"] is True and resolved["meds"]["memory_dir"] == str(tmp_path / "run" / "meds_state")
