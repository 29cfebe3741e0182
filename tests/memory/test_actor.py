"""MemoryActor / MemoryClient on a real in-process Ray cluster: exact equality with the
synchronous ErrorMemory under shuffled concurrent submissions, sharding, snapshots, crashes."""

import json
import os
import shutil
import time

import numpy as np
import pytest
import ray

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.meds.memory_files import memory_file_base
from openrlhf_meds.memory.client import MemoryClient
from openrlhf_meds.memory.routing import new_group_id, shard_of
from openrlhf_meds.memory.wal import read_manifest

D, N = 6, 8  # feature width, rollouts per group


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(local_ray):
    local_ray(runtime_env={"env_vars": {"NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", "")}})
    yield
    ray.shutdown()


def make_steps(seed, steps=4, prompts=6, repeat=None):
    """Per step: a list of groups (prompt key, features [N, D], correct [N]); rollouts sit
    around two modes per prompt, a few have no feature. `repeat`: a prompt drawn twice."""
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(prompts, 2, D)) * 3
    out = []
    for _ in range(steps):
        groups = []
        for p in list(range(prompts)) + ([repeat] if repeat is not None else []):
            f = (modes[p, rng.integers(0, 2, N)] + rng.normal(size=(N, D)) * 0.2).astype(np.float32)
            f[rng.random(N) < 0.1] = np.nan
            groups.append((f"prompt-{p}", f, rng.random(N) < 0.3))
        out.append(groups)
    return out


def sync_results(cfg, steps):
    """The reference: one ErrorMemory.step per training step over all its groups."""
    mem, out = ErrorMemory(cfg), []
    for groups in steps:
        sizes, pens = mem.step(
            [k for k, f, _ in groups for _ in f],
            np.concatenate([f for _, f, _ in groups]),
            np.concatenate([c for _, _, c in groups]),
        )
        out.append((np.split(sizes, len(groups)), np.split(pens, len(groups))))
    return mem, out


@ray.remote(num_cpus=0)
def submit_groups(client, step, groups):
    """One submitter (think: one vLLM engine): submits its groups in order, as they finish."""
    gids = []
    for key, feats, correct in groups:
        gid, ack = client.submit(key, step, feats, correct)
        assert ray.get(ack) == gid
        gids.append(gid)
    return gids


def stream_step(client, step, groups, rng, submitters=3):
    """Submit a step's groups shuffled, from several concurrent Ray tasks; a repeated prompt's
    groups stay in order (its rollouts enter the memory in arrival order)."""
    order = rng.permutation(len(groups))
    first = {}
    for i in range(len(groups)):
        first.setdefault(groups[i][0], i)
    lanes = [[] for _ in range(submitters)]
    for i in order:
        lanes[first[groups[i][0]] % submitters].append(int(i))  # same key -> same lane
    for lane in lanes:  # a repeated key's groups: keep their slots, put them in index order
        slots = {}
        for pos, i in enumerate(lane):
            slots.setdefault(groups[i][0], []).append(pos)
        for positions in slots.values():
            for pos, i in zip(positions, sorted(lane[p] for p in positions)):
                lane[pos] = i
    refs = [submit_groups.remote(client, step, [groups[i] for i in lane]) for lane in lanes]
    gids = [None] * len(groups)
    for lane, ids in zip(lanes, ray.get(refs)):
        for i, gid in zip(lane, ids):
            gids[i] = gid
    return gids


def stream(client, steps, seed=0, first_step=0):
    rng = np.random.default_rng(seed)
    out = []
    for t, groups in enumerate(steps, start=first_step):
        gids = stream_step(client, t, groups, rng)
        res = client.fetch(gids)
        out.append(([r[0] for r in res], [r[1] for r in res]))
    return out


def assert_same(a, b):
    for (sa, pa), (sb, pb) in zip(a, b):
        for x, y in zip(sa, sb):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(pa, pb):
            np.testing.assert_array_equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 3])
def test_streamed_shuffled_concurrent_equals_synchronous(tmp_path, shards):
    cfg = MedsConfig(memory_shards=shards, memory_dir=str(tmp_path), snapshot_interval=2)
    steps = make_steps(0, steps=5, repeat=2)
    mem, expected = sync_results(cfg, steps)
    client = MemoryClient.start(cfg, num_cpus=0)
    try:
        got = stream(client, steps)
        assert_same(got, expected)
        assert any((s > 0).any() for s in expected[-1][0])  # the test exercises penalties
        client.flush()
        stats, ref = client.stats(), mem.stats()
        for k in ("keys", "vectors", "rollouts", "stored", "penalized", "rejected_nan", "clustered_keys"):
            assert stats[k] == ref[k], k
        assert stats["clusters_per_key"] == pytest.approx(ref["clusters_per_key"])
        assert stats["noise_frac"] == pytest.approx(ref["noise_frac"])
        assert stats["frac_penalized"] == pytest.approx(ref["penalized"] / ref["rollouts"])
        assert stats["queue_depth"] == 0 and stats["groups"] == sum(len(g) for g in steps)
        assert stats["failed_groups"] == 0
        assert stats["assign_latency_ms_mean"] > 0 and stats["recluster_ms_max"] > 0
    finally:
        client.shutdown()


def test_answers_reach_the_shards_memories_stats_and_snapshots(tmp_path):
    """Final answers go with submit into each shard's memory (a group may leave them out),
    leave the penalties alone, and the shards' agreement stats combine as over one memory."""
    cfg = MedsConfig(memory_shards=2, memory_dir=str(tmp_path / "m"))
    steps = make_steps(4, steps=2, prompts=4)
    # prompt-0 is submitted without answers; the others answer by the side of their first dim
    answers = [[None if k == "prompt-0" else [f"{k}:{int(x > 0)}" for x in f[:, 0]] for k, f, _ in g] for g in steps]
    ref = ErrorMemory(cfg)
    expected = []
    for t, groups in enumerate(steps):
        touched = set()
        for (key, feats, correct), a in zip(groups, answers[t]):
            sizes, pens, keys = ref.assign([key] * N, feats, correct, step=t, answers=a)
            expected.append(pens)
            touched.update(keys)
        ref.recluster(touched)
    assert {shard_of(f"prompt-{p}", 2) for p in range(4)} == {0, 1}, "both shards hold keys"
    client = MemoryClient.start(cfg, num_cpus=0)
    try:
        got = []
        for t, groups in enumerate(steps):
            gids = []
            for (key, feats, correct), a in zip(groups, answers[t]):
                kwargs = {} if a is None else {"answers": a}  # callers without answers still work
                gid, ack = client.submit(key, t, feats, correct, **kwargs)
                assert ray.get(ack) == gid
                gids.append(gid)
            got += [r[1] for r in client.fetch(gids)]
        for x, y in zip(got, expected):
            np.testing.assert_array_equal(x, y)
        client.flush()
        stats, want = client.stats(), ref.stats()
        assert want["cluster_answer_agreement_keys"] >= 2
        assert stats["cluster_answer_agreement_keys"] == want["cluster_answer_agreement_keys"]
        assert stats["cluster_answer_agreement"] == pytest.approx(want["cluster_answer_agreement"], abs=1e-12)
        client.snapshot(str(tmp_path / "ckpt"), step=2)
    finally:
        client.shutdown()
    names = json.load(open(tmp_path / "ckpt" / "manifest.json"))["files"]
    saved = ErrorMemory(cfg)
    for name in names:
        saved.absorb(ErrorMemory.load(str(tmp_path / "ckpt" / name)))
    assert set(saved.keys) == set(ref.keys)
    for key, mem in ref.keys.items():
        want_answers = [ref.answer_of(int(i)) if i != -1 else "?" for i in mem.answers]
        assert [saved.answer_of(int(i)) if i != -1 else "?" for i in saved.keys[key].answers] == want_answers
    assert (saved.keys[("prompt-0", False)].answers == -1).all()


def test_routing_is_stable():
    assert shard_of("prompt-1", 7) == shard_of("prompt-1", 7)
    assert shard_of(1, 7) != shard_of("1", 7) or shard_of(2, 7) != shard_of("2", 7)
    counts = np.bincount([shard_of(f"p{i}", 4) for i in range(400)], minlength=4)
    assert counts.min() > 60  # spread over the shards
    gid = new_group_id("p3", 4)
    assert gid >= 0 and gid & 1023 == shard_of("p3", 4)


@pytest.mark.slow
def test_snapshot_restore_round_trip_into_other_shard_count(tmp_path):
    steps = make_steps(1, steps=6)
    cfg = MedsConfig(memory_shards=3, memory_dir=str(tmp_path / "a"))
    client = MemoryClient.start(cfg, num_cpus=0)
    try:
        stream(client, steps[:3])
        client.snapshot(str(tmp_path / "ckpt"), step=3)
        after = stream(client, steps[3:], seed=1, first_step=3)
        stats_a = client.stats()
    finally:
        client.shutdown()
    manifest = json.load(open(tmp_path / "ckpt" / "manifest.json"))
    assert manifest["num_shards"] == 3 and len(manifest["files"]) == 3

    cfg2 = MedsConfig(memory_shards=2, memory_dir=str(tmp_path / "b"))
    client = MemoryClient.start(cfg2, num_cpus=0)
    try:
        client.restore(str(tmp_path / "ckpt"))
        resumed = stream(client, steps[3:], seed=2, first_step=3)
        stats_b = client.stats()
    finally:
        client.shutdown()
    assert_same(resumed, after)  # bitwise-equal penalties after the restore
    assert any((p > 0).any() for p in after[-1][1])
    for k in ("keys", "vectors", "rollouts", "penalized"):
        assert stats_a[k] == stats_b[k], k
    assert stats_a["failed_groups"] == stats_b["failed_groups"] == 0


@pytest.mark.slow
def test_snapshot_is_a_tail_on_the_recovery_base_and_restores_into_as_many_shards(tmp_path):
    """A training snapshot is each shard's recovery base (written in the background, linked)
    plus the groups logged since; restored into fresh shards of the same count (each reads
    its own file) it gives the same penalties, also after a shard of the restored cluster
    is killed and rebuilds itself from the restored files and its log."""
    steps = make_steps(5, steps=7)
    cfg = MedsConfig(memory_shards=2, memory_dir=str(tmp_path / "a"), snapshot_interval=2)
    client = MemoryClient.start(cfg, num_cpus=0)
    try:
        stream(client, steps[:3])  # a recovery snapshot at step 2
        client.flush()  # ... written
        client.snapshot(str(tmp_path / "ckpt"), step=3)
        after = stream(client, steps[3:], seed=1, first_step=3)
        client.flush()
        stats_a = client.stats()
    finally:
        client.shutdown()
    manifest, files = read_manifest(str(tmp_path / "ckpt"))
    for f in files:  # a tail of the step-2 snapshot's groups (step 2) on that snapshot
        base = memory_file_base(f)
        assert base.startswith("base-") and os.path.isfile(tmp_path / "ckpt" / base)
    assert manifest["vectors"] == sum(ErrorMemory.load(f).stats()["vectors"] for f in files)
    for shard in ("shard-00000", "shard-00001"):  # the recovery base after the snapshot: a full file
        base = json.load(open(tmp_path / "a" / shard / "base.json"))
        assert (
            base["memory"].startswith("base-")
            and memory_file_base(str(tmp_path / "a" / shard / base["memory"])) is None
        )

    cfg2 = MedsConfig(memory_shards=2, memory_dir=str(tmp_path / "b"), snapshot_interval=0)
    client = MemoryClient.start(cfg2, num_cpus=0)
    rng = np.random.default_rng(0)
    try:
        client.restore(str(tmp_path / "ckpt"))
        resumed = []
        for t, groups in enumerate(steps[3:], start=3):
            half = len(groups) // 2
            gids = stream_step(client, t, groups[:half], rng)
            if t == 5:  # recovers from the restored files (no snapshot since) and its log
                ray.kill(client.actors[0], no_restart=False)
            gids += stream_step(client, t, groups[half:], rng)
            res = client.fetch(gids)
            resumed.append(([r[0] for r in res], [r[1] for r in res]))
        client.flush()
        stats_b = client.stats()
    finally:
        client.shutdown()
    assert_same(resumed, after)
    assert any((p > 0).any() for p in after[-1][1])
    for k in ("keys", "vectors", "rollouts", "penalized"):
        assert stats_a[k] == stats_b[k], k
    assert stats_b["restarts"] == 1 and stats_b["lost_groups"] == stats_b["failed_groups"] == 0
    assert json.load(open(tmp_path / "b" / "shard-00000" / "base.json"))["memory"].startswith("restored-")


def test_missing_or_corrupt_snapshot(tmp_path):
    client = MemoryClient.start(MedsConfig(memory_dir=str(tmp_path / "m")), num_cpus=0)
    try:
        with pytest.raises(FileNotFoundError, match="missing manifest.json"):
            client.restore(str(tmp_path / "nothing"))
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "manifest.json").write_text("{not json")
        with pytest.raises(ValueError, match="corrupt MEDS memory manifest"):
            client.restore(str(tmp_path / "bad"))
        client.snapshot(str(tmp_path / "ok"))
        os.unlink(tmp_path / "ok" / "shard-00000-of-00001.npz")
        with pytest.raises(FileNotFoundError, match="incomplete"):
            client.restore(str(tmp_path / "ok"))
    finally:
        client.shutdown()


def test_bad_calls_get_clear_errors(tmp_path):
    client = MemoryClient.start(MedsConfig(memory_dir=str(tmp_path)), num_cpus=0)
    f = np.ones((N, D), np.float32)
    ok = np.zeros(N, bool)
    try:
        gid, ack = client.submit("p", 0, f, ok)
        ray.get(ack)
        with pytest.raises(ray.exceptions.RayTaskError, match="duplicate submit"):
            ray.get(client.submit("p", 0, f * 2, ok, group_id=gid)[1])
        assert ray.get(client.submit("p", 0, f, ok, group_id=gid)[1]) == gid  # a retry is fine
        bad = [
            ((np.ones(D, np.float32), ok[:1]), "features must be \\[n, d\\]"),
            ((np.ones((0, D), np.float32), ok[:0]), "n >= 1"),
            ((f[:, :3], ok), "3 dims but the memory holds 6"),
            ((f, ok.astype(int)), "must be a bool array"),
            ((f, ok[:3]), "expected features"),
        ]
        for (feats, correct), msg in bad:
            with pytest.raises(ray.exceptions.RayTaskError, match=msg):
                ray.get(client.submit("p", 0, feats, correct)[1])
        with pytest.raises(ray.exceptions.RayTaskError, match="step must be an integer"):
            ray.get(client.submit("p", -1, f, ok)[1])
        assert client.fetch([gid])[0][1].shape == (N,)
        with pytest.raises(ray.exceptions.RayTaskError, match="unknown MEDS group id"):
            client.fetch([gid])  # already fetched
        with pytest.raises(ray.exceptions.RayTaskError, match="does not belong to memory shard"):
            ray.get(client.actors[0].submit.remote(gid | 1, "p", 0, f, ok))
    finally:
        client.shutdown()


@pytest.mark.slow
def test_killed_shard_restarts_from_snapshot_and_log(tmp_path):
    """ray.kill a shard mid-step: Ray restarts it, it replays, penalties stay exact."""
    cfg = MedsConfig(memory_shards=2, memory_dir=str(tmp_path), snapshot_interval=2)
    steps = make_steps(3, steps=5)
    _, expected = sync_results(cfg, steps)
    client = MemoryClient.start(cfg, num_cpus=0)
    rng = np.random.default_rng(0)
    try:
        got = []
        for t, groups in enumerate(steps):
            half = len(groups) // 2
            gids = stream_step(client, t, groups[:half], rng)
            if t in (1, 3):  # mid-step, penalties of the first half not fetched yet
                ray.kill(client.actors[t % 2], no_restart=False)
            gids += stream_step(client, t, groups[half:], rng)
            res = client.fetch(gids)
            got.append(([r[0] for r in res], [r[1] for r in res]))
        assert_same(got, expected)
        client.flush()  # recovery snapshots are written in the background
        stats = client.stats()
        assert stats["lost_groups"] == stats["failed_groups"] == 0
        assert stats["restarts"] == 2 and stats["replayed_groups"] >= 2  # both kills recovered
        assert os.path.exists(tmp_path / "shard-00001" / "base.json")  # a snapshot was used
    finally:
        client.shutdown()


@pytest.mark.slow
def test_unreplayable_crash_is_counted_and_training_goes_on(tmp_path):
    cfg = MedsConfig(memory_dir=str(tmp_path))
    f = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
    ok = np.zeros(N, bool)
    client = MemoryClient.start(cfg, num_cpus=0)
    try:
        gid, ack = client.submit("p", 0, f, ok)
        ray.get(ack)
        client.flush()
        shutil.rmtree(tmp_path / "shard-00000")  # as if restarted on a node without the log
        ray.kill(client.actors[0], no_restart=False)
        # ray.kill returns at once: wait (at most 60 s) until Ray has restarted the shard, so
        # the fetch below is answered by the new process and not by the dying one.
        deadline = time.time() + 60
        while ray.get(client.actors[0].stats.remote(reset=False)).get("restarts", 0) < 1:
            assert time.time() < deadline, "the killed shard was not restarted within 60 s"
            time.sleep(0.2)
        assert client.fetch([gid]) == [None]  # zero penalties for the caller, not a hang
        gid2, ack = client.submit("p", 1, f, ok)
        ray.get(ack)
        sizes, pens = client.fetch([gid2])[0]
        assert (sizes == 0).all()  # the memory of step 0 was lost, as reported
        assert client.stats()["lost_groups"] == 1
    finally:
        client.shutdown()
