"""benchmarks/memory_full_run.py: its bulk-built memory equals a step-by-step history, and
a tiny run through real MemoryActor shards gives consistent rows (the full sizes take
half an hour: docs/benchmarks.md)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import ray

from openrlhf_meds.meds import ErrorMemory, MedsConfig

spec = importlib.util.spec_from_file_location(
    "memory_full_run", os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "memory_full_run.py")
)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # its dataclass looks its module up
spec.loader.exec_module(bench)

SCALE = bench.Scale(prompts=30, groups=8, rollouts=4, dim=14, shards=2, seed=0)


def test_features_are_rounded_as_the_default_feature_dtype_rounds_them():
    from openrlhf_meds.meds.features import round_logits

    x = np.random.default_rng(0).normal(size=(64, 14)).astype(np.float32) * 3
    np.testing.assert_array_equal(bench.round_bf16(x), round_logits(x, MedsConfig()))


def test_schedule_draws_every_prompt_once_per_epoch_and_counts_occurrences():
    sched, occ = bench.schedule(SCALE, 10)  # 80 draws: 2 full epochs of 30 prompts, then 20 more
    flat, occ = sched.ravel(), occ.ravel()
    for e in range(2):
        assert sorted(flat[e * 30 : (e + 1) * 30]) == list(range(30))
    for i in range(len(flat)):
        assert occ[i] == (flat[:i] == flat[i]).sum()


def test_bulk_built_memory_equals_the_step_by_step_history(tmp_path):
    steps = 12
    sched, occ = bench.schedule(SCALE, steps + 1)
    keys = bench.prompt_keys(SCALE.prompts)
    history = ErrorMemory(MedsConfig())
    for t in range(steps):
        touched = set()
        for key, feats, ok, answers in bench.step_groups(SCALE, sched, occ, keys, t):
            touched.update(history.assign([key] * len(feats), feats, ok, step=t, answers=answers)[2])
        history.recluster(touched)  # the shards' background work
    bulk = ErrorMemory(MedsConfig())
    for shard in range(SCALE.shards):
        info = bench.build_shard(SCALE, steps, shard, str(tmp_path / f"{shard}.npz"))
        part = ErrorMemory.load(str(tmp_path / f"{shard}.npz"))
        assert info["vectors"] == part.stats()["vectors"]
        bulk.absorb(part)
    assert set(bulk.keys) == set(history.keys)
    assert bulk.stats()["vectors"] == steps * SCALE.per_step
    for key, want in history.keys.items():
        got = bulk.keys[key]
        assert got.data.dtype == np.uint16, "bf16 features are stored packed"
        np.testing.assert_array_equal(got.vectors, want.vectors)
        assert (got.labels is None) == (want.labels is None) == bool(key[1]), "target=wrong: right keys unclustered"
        if want.labels is not None:
            np.testing.assert_array_equal(got.labels, want.labels)
            np.testing.assert_array_equal(got.mst, want.mst)
        assert [bulk.answer_of(int(i)) for i in got.answers] == [history.answer_of(int(i)) for i in want.answers]
    # ... so the next step's penalties are the same
    pens = {}
    for name, memory in (("bulk", bulk), ("history", history)):
        groups = bench.step_groups(SCALE, sched, occ, keys, steps)
        pens[name] = np.concatenate([memory.assign([k] * len(f), f, ok, step=steps)[1] for k, f, ok, _ in groups])
    np.testing.assert_array_equal(pens["bulk"], pens["history"])
    assert (pens["bulk"] > 0).any()


@pytest.mark.slow
def test_tiny_run_gives_consistent_rows_and_resumes(tmp_path, local_ray):
    local_ray(runtime_env={"env_vars": {"NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", "")}})
    argv = ["--sizes", "320", "--workdir", str(tmp_path), "--prompts", "30", "--groups", "8", "--rollouts", "4"]
    argv += ["--shards", "2", "--steps", "2", "--wal-steps", "2", "--stream-seconds", "0", "--build-procs", "1"]
    try:
        (row,) = bench.main(argv)
        stamp = os.path.getmtime(tmp_path / "320" / "run.json")
        assert bench.main(argv) == [row], "a second run reads the stored phases"
    finally:
        ray.shutdown()
    assert os.path.getmtime(tmp_path / "320" / "run.json") == stamp
    assert row["vectors"] == 320 and row["shards"] == 2  # 10 steps of 8 groups x 4 rollouts
    assert row["keys"] == len(
        ErrorMemory.load(str(tmp_path / "320" / "built" / "shard-00000-of-00002.npz")).keys
    ) + len(ErrorMemory.load(str(tmp_path / "320" / "built" / "shard-00001-of-00002.npz")).keys)
    run = json.load(open(tmp_path / "320" / "run.json"))
    assert run["loaded_vectors"] == 320
    # a warm-up step, then the timed ones: each step adds its 32 rollouts
    assert [t["vectors"] for t in run["timed"]] == [320 + 2 * 32, 320 + 3 * 32]
    assert row["snapshot_vectors"] == row["restored_vectors"] == 320 + 3 * 32
    assert run["final_vectors"] == 320 + 3 * 32 + 3 * 32  # the snapshot, 2 steps, the step with the kill
    assert row["identical_after_restore"] and row["identical_after_replay"]
    assert row["replayed_groups"] > 0 and run["restarts"] == 1
    assert row["bytes_per_vector_arrays"] > 0 and row["rss_mib_max"] > row["rss_mib_idle"] > 0
    assert 0 < row["snapshot_call_mb"] * 1e6 < row["snapshot_gb"] * 1e9, "the call writes a tail, the base is linked"
    penalized = json.load(open(tmp_path / "320" / "restore.json"))["penalized"]
    assert len(penalized) == 3 and sum(penalized) > 0
    assert sorted(os.listdir(tmp_path / "320")) == ["built", "params.json", "penalties.npz", "restore.json", "run.json"]
    assert "| 320 | 320 |" in bench.table([row])
