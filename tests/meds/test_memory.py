"""ErrorMemory options, bad input and checkpoints (exactness: test_memory_parity.py)."""

import numpy as np
import pytest

from openrlhf_meds.meds import ErrorMemory, MedsConfig

D = 14


def clustered_steps(seed, steps=4, prompts=3, n=10):
    """Rollouts around two modes per prompt; all wrong unless `correct` says otherwise."""
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(prompts, 2, D)) * 3
    out = []
    for _ in range(steps):
        keys = [f"q{p}" for p in range(prompts) for _ in range(n)]
        feats = np.concatenate(
            [modes[p, rng.integers(0, 2, n)] + rng.normal(size=(n, D)) * 0.1 for p in range(prompts)]
        )
        correct = rng.random(len(keys)) < 0.3
        out.append((keys, feats.astype(np.float32), correct))
    return out


def run(cfg, steps):
    mem = ErrorMemory(cfg)
    return mem, [mem.step(*s) for s in steps]


def test_first_visit_is_free_then_repeats_are_penalized():
    steps = clustered_steps(0)
    mem, results = run(MedsConfig(), steps)
    sizes0, pens0 = results[0]
    assert (sizes0 == 0).all() and (pens0 == 0).all()
    sizes, pens = results[2]
    wrong = ~steps[2][2]
    assert (sizes[wrong] >= 2).all(), "wrong rollouts land in clusters of past errors"
    assert (sizes[~wrong] == 0).all(), "target=wrong leaves correct rollouts alone"
    np.testing.assert_allclose(pens[wrong], np.minimum(0.1 * np.log(sizes[wrong] + 1.0), 0.2))


@pytest.mark.parametrize("target", ["right", "both", "none"])
def test_targets(target):
    steps = clustered_steps(1)
    _, results = run(MedsConfig(target=target), steps)
    sizes, _ = results[-1]
    correct = steps[-1][2]
    penalized = {"right": correct, "both": np.ones_like(correct), "none": np.zeros_like(correct)}[target]
    assert (sizes[~penalized] == 0).all()
    assert (sizes[penalized] > 0).all()


def test_noise_policy_zero_vs_cluster():
    # isolated random directions: every stored vector is noise, a vote gives label -1
    rng = np.random.default_rng(2)
    steps = [(["k"] * 3, rng.normal(size=(3, D)).astype(np.float32), np.zeros(3, bool)) for _ in range(3)]
    _, ref = run(MedsConfig(noise="cluster"), steps)
    _, zero = run(MedsConfig(noise="zero"), steps)
    assert (ref[1][0] == 3).all(), "the reference counts all stored noise points"
    assert (zero[1][0] == 0).all()


def test_joint_assignment_counts_the_new_rollouts_cluster():
    steps = clustered_steps(3, steps=2)
    _, results = run(MedsConfig(assignment="joint", target="both"), steps)
    sizes0, _ = results[0]
    # first visit: the new rollouts of a prompt already cluster among themselves (a noise
    # point counts the key's noise points, itself included, under the reference policy)
    assert (sizes0 > 0).all() and (sizes0 >= 2).mean() > 0.9
    _, knn = run(MedsConfig(target="both"), steps)
    assert (knn[0][0] == 0).all()
    # a joint cluster also counts this step's rollouts, so it is larger on average
    assert results[1][0].mean() > knn[1][0].mean()


def test_single_and_random_ablations():
    steps = clustered_steps(4, steps=3)
    _, single = run(MedsConfig(clustering="single", target="both"), steps)
    keys, _, correct = steps[2]
    # count-based: |C| is the number of earlier rollouts of the same prompt and verdict
    expected = np.array(
        [sum(1 for s in steps[:2] for k2, c2 in zip(s[0], s[2]) if k2 == k and c2 == c) for k, c in zip(keys, correct)]
    )
    np.testing.assert_array_equal(single[2][0], expected)
    # ... of those the memory still holds: with a bound, the evicted ones no longer count
    _, bounded = run(MedsConfig(clustering="single", target="both", memory_bound=12), steps)
    assert (expected > 12).any() and (expected <= 12).any()
    np.testing.assert_array_equal(bounded[2][0], np.minimum(expected, 12))
    _, rnd1 = run(MedsConfig(clustering="random", seed=1, target="both"), steps)
    _, rnd2 = run(MedsConfig(clustering="random", seed=1, target="both"), steps)
    np.testing.assert_array_equal(rnd1[2][0], rnd2[2][0])  # seeded
    assert (rnd1[2][0] > 0).all()


def test_memory_bound_evicts_oldest():
    steps = clustered_steps(5, steps=5, prompts=1)
    mem, _ = run(MedsConfig(memory_bound=12, target="both"), steps)
    for key, m in mem.keys.items():
        assert len(m.vectors) <= 12
        # the kept vectors are the most recent ones of that key
        recent = np.concatenate([s[1][[i for i in range(len(s[0])) if (s[0][i], bool(s[2][i])) == key]] for s in steps])
        np.testing.assert_array_equal(m.vectors, recent[-len(m.vectors) :])
    assert mem.stats()["evicted"] == 50 - sum(len(m.vectors) for m in mem.keys.values())


def test_bad_features_are_rejected_per_rollout_and_counted():
    steps = clustered_steps(6, steps=2, prompts=1)
    keys, feats, correct = steps[1]
    feats = feats.copy()
    correct = np.zeros_like(correct)
    feats[0] = np.nan  # no \boxed{} answer
    feats[1, 3] = np.nan
    feats[2, 0] = np.inf
    feats[3] = 0.0
    mem = ErrorMemory(MedsConfig())
    mem.step(steps[0][0], steps[0][1], np.zeros(10, bool))
    before = mem.keys[("q0", False)].vectors.copy()
    sizes, pens = mem.step(keys, feats, correct)
    assert (sizes[:4] == 0).all() and (pens[:4] == 0).all()
    assert (sizes[4:] > 0).all(), "the valid rollouts of the same key still get penalties"
    stored = mem.keys[("q0", False)].vectors
    np.testing.assert_array_equal(stored[: len(before)], before)
    assert len(stored) == len(before) + 6 and np.isfinite(stored).all()
    st = mem.stats()
    assert [st[f"rejected_{reason}"] for reason in ("no_feature", "nan", "inf", "zero_vector")] == [1, 1, 1, 1]


def test_malformed_calls_raise_and_change_nothing():
    mem = ErrorMemory()
    mem.step(["a", "a"], np.ones((2, D), np.float32), np.array([False, False]))
    state = mem.state_dict()
    with pytest.raises(ValueError, match="14"):
        mem.step(["a"], np.ones((1, 5), np.float32), np.array([False]))
    with pytest.raises(ValueError, match="n=2"):
        mem.step(["a", "b"], np.ones((3, D)), np.array([False, False]))
    with pytest.raises(ValueError, match="bool"):
        mem.step(["a"], np.ones((1, D)), np.array([0.7]))
    with pytest.raises(TypeError, match="str or int"):
        mem.step([("a", 1)], np.ones((1, D)), np.array([False]))
    assert mem.state_dict()["vectors"].shape == state["vectors"].shape
    sizes, pens = mem.step([], np.empty((0, D)), np.empty(0, bool))  # an empty step
    assert sizes.shape == pens.shape == (0,)


def test_assign_then_late_recluster_equals_step():
    """Results never depend on when the (background) re-clustering runs."""
    steps = clustered_steps(7, steps=5)
    _, sync = run(MedsConfig(target="both"), steps)
    lazy = ErrorMemory(MedsConfig(target="both"))
    for i, s in enumerate(steps):
        sizes, pens, touched = lazy.assign(*s)
        np.testing.assert_array_equal(sizes, sync[i][0])
        np.testing.assert_array_equal(pens, sync[i][1])
        if i % 2:
            assert lazy.recluster(touched) == len(touched)


@pytest.mark.parametrize(
    "cfg", [MedsConfig(), MedsConfig(target="both", memory_bound=25), MedsConfig(clustering="single")]
)
def test_step_split_into_shuffled_groups_with_repeated_prompts_equals_step(cfg):
    """A step arriving group by group in random order, with a prompt drawn twice (two groups
    of one key in one step), gives exactly the one-call step over the same rollouts (in
    arrival order: a repeated prompt's rollouts enter its memory in that order)."""
    rng = np.random.default_rng(3)
    steps = clustered_steps(11, steps=5, prompts=3, n=8)
    # q0 appears twice in every step: its second group is q1's rollouts relabelled.
    steps = [(["q0" if k == "q1" else k for k in keys], f, c) for keys, f, c in steps]
    orders = [rng.permutation(3) for _ in steps]
    arrived = [(np.concatenate([np.arange(8) + 8 * g for g in order])) for order in orders]
    _, sync = run(cfg, [([keys[i] for i in rows], f[rows], c[rows]) for (keys, f, c), rows in zip(steps, arrived)])
    mem = ErrorMemory(cfg)
    for t, (keys, feats, correct) in enumerate(steps):
        sizes, pens = [], []
        for g in orders[t]:
            rows = np.arange(8) + 8 * g
            out = mem.assign([keys[i] for i in rows], feats[rows], correct[rows], step=t)
            sizes.append(out[0]), pens.append(out[1])
            if rng.random() < 0.5:
                mem.recluster(out[2])  # background work may or may not have run
        np.testing.assert_array_equal(np.concatenate(sizes), sync[t][0])
        np.testing.assert_array_equal(np.concatenate(pens), sync[t][1])
    assert (sync[-1][0] > 0).any()
    assert mem.stats().get("late_duplicates", 0) == 0
    with pytest.raises(ValueError, match="steps must not go backwards"):
        mem.assign(["q0"], steps[0][1][:1], np.array([False]), step=2)


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    steps = clustered_steps(8, steps=6)
    _, full = run(MedsConfig(), steps)
    mem = ErrorMemory(MedsConfig())
    for s in steps[:3]:
        mem.step(*s)
    path = tmp_path / "sub" / "memory.npz"
    mem.save(str(path))
    resumed = ErrorMemory.load(str(path))
    assert resumed.stats() == mem.stats()
    for i, s in enumerate(steps[3:], start=3):
        sizes, pens = resumed.step(*s)
        np.testing.assert_array_equal(sizes, full[i][0])
        np.testing.assert_array_equal(pens, full[i][1])
    assert [p.name for p in path.parent.iterdir()] == ["memory.npz"], "no temporary files left"


def test_empty_memory_round_trip(tmp_path):
    ErrorMemory().save(str(tmp_path / "empty.npz"))
    mem = ErrorMemory.load(str(tmp_path / "empty.npz"))
    assert mem.stats()["keys"] == 0 and mem.dim is None
    sizes, _ = mem.step(["a"] * 2, np.ones((2, D), np.float32), np.zeros(2, bool))
    assert (sizes == 0).all()


def test_corrupt_or_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MEDS memory checkpoint"):
        ErrorMemory.load(str(tmp_path / "missing.npz"))
    mem = ErrorMemory()
    mem.step(["a"] * 4, np.random.default_rng(0).normal(size=(4, D)), np.zeros(4, bool))
    good = tmp_path / "m.npz"
    mem.save(str(good))
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt MEDS memory checkpoint"):
        ErrorMemory.load(str(tmp_path / "trunc.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt MEDS memory checkpoint"):
        ErrorMemory.load(str(tmp_path / "junk.npz"))
    state = mem.state_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        ErrorMemory().load_state_dict(state)


def test_stats_and_compact_storage():
    steps = clustered_steps(9, steps=4, prompts=4, n=16)
    mem, _ = run(MedsConfig(target="both"), steps)
    st = mem.stats()
    assert st["vectors"] == 4 * 4 * 16 and st["rollouts"] == 256
    assert st["bytes_per_vector"] <= 80, "float32 vectors + int32 labels + int32 tree"
    assert st["clusters_per_key"] >= 1 and 0 <= st["noise_frac"] <= 1


def answered_steps(seed, steps=3, prompts=2, n=12):
    """clustered_steps with final answers: each prompt's two modes give two wrong answers
    (mode m of prompt p answers "p-m"); one rollout in six has no answer."""
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(prompts, 2, D)) * 3
    out = []
    for t in range(steps):
        keys, feats, answers = [], [], []
        for p in range(prompts):
            m = rng.integers(0, 2, n)
            keys += [f"q{p}"] * n
            feats.append(modes[p, m] + rng.normal(size=(n, D)) * 0.1)
            answers += [None if (t + i) % 6 == 0 else f"{p}-{mi}" for i, mi in enumerate(m)]
        out.append((keys, np.concatenate(feats).astype(np.float32), np.zeros(len(keys), bool), answers))
    return out


def stored_answers(mem, key):
    """The answers stored with the key's vectors, as strings (None: no answer)."""
    return [mem.answer_of(int(i)) for i in mem.keys[key].answers]


def expected_agreement(mem):
    """Direct computation: scikit-learn's ARI per clustered key, over non-noise vectors with a
    known answer (no answer is one class), averaged over the keys with at least two."""
    from sklearn.metrics import adjusted_rand_score

    values = []
    for m in mem.keys.values():
        if m.labels is None or not len(m.labels):
            continue
        keep = (m.labels != -1) & (m.answers != -1)
        if keep.sum() >= 2:
            values.append(adjusted_rand_score(m.labels[keep], m.answers[keep]))
    return values


def test_answers_are_kept_with_their_vectors_through_steps_and_checkpoints(tmp_path):
    steps = answered_steps(12)
    plain = ErrorMemory(MedsConfig(memory_bound=30))
    mem = ErrorMemory(MedsConfig(memory_bound=30))
    for keys, feats, correct, answers in steps:
        feats = feats.copy()
        feats[1] = np.nan  # not stored: its answer must not be either
        np.testing.assert_array_equal(mem.step(keys, feats, correct, answers)[1], plain.step(keys, feats, correct)[1])
    # The last 30 of each key's stored rollouts (the bound evicts the oldest), in order.
    for p in range(2):
        expected = [a for keys, _, _, answers in steps for i, a in enumerate(answers) if keys[i] == f"q{p}" and i != 1]
        assert stored_answers(mem, (f"q{p}", False)) == expected[-30:]
    assert sorted(mem.answer_table) == ["0-0", "0-1", "1-0", "1-1"]
    assert (plain.keys[("q0", False)].answers == -1).all(), "no answers given: unknown"

    path = str(tmp_path / "m.npz")
    mem.save(path)
    loaded = ErrorMemory.load(path)
    assert loaded.stats() == mem.stats()
    for key in mem.keys:
        assert stored_answers(loaded, key) == stored_answers(mem, key)
    # Re-sharding: absorb re-numbers the answers into the receiving memory's table.
    other = ErrorMemory()
    other.step(["z"] * 3, np.eye(3, D, dtype=np.float32) + 1, np.zeros(3, bool), ["1-1", "new", None])
    other.absorb(ErrorMemory.load(path), keep=lambda k: k == "q1")
    assert set(other.keys) == {("z", False), ("q1", False)}
    assert stored_answers(other, ("q1", False)) == stored_answers(mem, ("q1", False))
    assert stored_answers(other, ("z", False)) == ["1-1", "new", None]
    assert sorted(other.answer_table) == ["1-0", "1-1", "new"], "only the kept keys' answers are added"


def test_a_checkpoint_without_answers_loads_with_answers_unknown(tmp_path):
    keys, feats, correct, answers = answered_steps(13, steps=1)[0]
    mem = ErrorMemory()
    mem.step(keys, feats, correct, answers)
    state = mem.state_dict()
    for name in ("answers", "answer_table", "answer_offsets"):
        del state[name]  # as a checkpoint written before answers were stored
    old = ErrorMemory()
    old.load_state_dict(state)
    assert old.answer_table == [] and all((m.answers == -1).all() for m in old.keys.values())
    assert old.stats()["cluster_answer_agreement_keys"] == 0
    sizes, _ = old.step(keys, feats, correct, answers)
    np.testing.assert_array_equal(sizes, mem.step(keys, feats, correct, answers)[0])
    bad = mem.state_dict()
    bad["answers"] = bad["answers"][:-1]
    with pytest.raises(ValueError, match="answer ids do not match"):
        ErrorMemory().load_state_dict(bad)


def test_answers_are_checked_and_cut():
    mem = ErrorMemory()
    f = np.ones((2, D), np.float32)
    no = np.zeros(2, bool)
    with pytest.raises(ValueError, match="expected 2 answers"):
        mem.step(["a", "a"], f, no, ["1"])
    with pytest.raises(TypeError, match="str or None"):
        mem.step(["a", "a"], f, no, ["1", 2])
    with pytest.raises(TypeError, match="not a single string"):
        mem.step(["a", "a"], f, no, "12")
    assert mem.keys == {}
    mem.step(["a", "a"], f, no, ["x" * 100, "y"])
    assert stored_answers(mem, ("a", False)) == ["x" * 64, "y"]


def test_cluster_answer_agreement_equals_a_direct_computation():
    mem = ErrorMemory(MedsConfig(target="both"))
    for keys, feats, correct, answers in answered_steps(14, steps=3, prompts=3):
        mem.step(keys, feats, correct, answers)
    st = mem.stats()
    values = expected_agreement(mem)
    assert st["cluster_answer_agreement_keys"] == len(values) == 3
    assert st["cluster_answer_agreement"] == pytest.approx(np.mean(values), abs=1e-12)
    # each mode is one cluster and one answer, up to the answerless sixth: high, not perfect
    assert 0.5 < st["cluster_answer_agreement"] < 1.0
    # answers that follow the clusters agree perfectly; answers that do not lower the value
    # (the cached value is refreshed when the key is re-clustered)
    exact = ErrorMemory()
    rng = np.random.default_rng(15)
    modes = rng.normal(size=(3, D)) * 3
    m = np.repeat(np.arange(3), 7)
    feats = (modes[m] + rng.normal(size=(21, D)) * 0.05).astype(np.float32)
    exact.step(["k"] * 21, feats, np.zeros(21, bool), [str(x) for x in m])
    st = exact.stats()
    assert exact.keys[("k", False)].labels.max() == 2  # three clusters
    assert st["cluster_answer_agreement"] == 1.0 and st["cluster_answer_agreement_keys"] == 1
    exact.step(["k"] * 21, feats, np.zeros(21, bool), [str(x) for x in rng.permutation(m)])
    st = exact.stats()
    assert st["cluster_answer_agreement"] == pytest.approx(np.mean(expected_agreement(exact)), abs=1e-12)
    assert st["cluster_answer_agreement"] < 0.9
