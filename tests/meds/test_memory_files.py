"""ErrorMemory's storage and files: bfloat16 vectors kept as their 16 high bits (bit-exact),
frozen views saved while the memory goes on, version-1 files, and tails (a memory file plus
the groups assigned after it)."""

import numpy as np
import pytest

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.meds.memory_files import memory_file_base, pack_vectors, save_tail, unpack_vectors
from openrlhf_meds.meds.reference import ReferenceMemory

D = 14


def bf16(x) -> np.ndarray:
    """float32 values rounded to bfloat16 (ties to even), as the default features are."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def groups(seed, steps=5, prompts=4, n=8, rounded=True):
    """Per step, one group per prompt: (prompt key, step, features, correct, answers)."""
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(prompts, 3, D)) * 3
    out = []
    for t in range(steps):
        step = []
        for p in range(prompts):
            m = rng.integers(0, 3, n)
            f = (modes[p, m] + rng.normal(size=(n, D)) * 0.1).astype(np.float32)
            f = bf16(f) if rounded else f
            f[rng.random(n) < 0.1] = np.nan  # a rollout without a feature
            step.append((f"q{p}", t, f, rng.random(n) < 0.3, [f"{p}-{x}" for x in m]))
        out.append(step)
    return out


def play(memory: ErrorMemory, steps) -> list[np.ndarray]:
    """Assign each step's groups, re-cluster what they touched; the penalties per step."""
    out = []
    for step in steps:
        touched, pens = set(), []
        for key, t, f, ok, answers in step:
            _, p, keys = memory.assign([key] * len(f), f, ok, step=t, answers=answers)
            pens.append(p)
            touched.update(keys)
        memory.recluster(touched)
        out.append(np.concatenate(pens))
    return out


def assert_same_memory(a: ErrorMemory, b: ErrorMemory):
    """Same keys, vectors (bits), answers (as strings), labels, trees and counters."""
    assert list(a.keys) == list(b.keys)
    for key, ma in a.keys.items():
        mb = b.keys[key]
        assert ma.data.dtype == mb.data.dtype
        np.testing.assert_array_equal(ma.data, mb.data)
        assert [a.answer_of(int(i)) for i in ma.answers] == [b.answer_of(int(i)) for i in mb.answers]
        assert (ma.labels is None) == (mb.labels is None)
        if ma.labels is not None:
            np.testing.assert_array_equal(ma.labels, mb.labels)
        np.testing.assert_array_equal(ma.mst, mb.mst)
    assert a.counters == b.counters


def test_pack_keeps_the_bits_of_bfloat16_values_and_leaves_others_alone():
    x = bf16(np.array([[1.0, -0.0, 3.14159, 1e-40, -2.5e30, 0.5]], np.float32))
    packed = pack_vectors(x)
    assert packed.dtype == np.uint16 and packed.nbytes == x.nbytes // 2
    np.testing.assert_array_equal(unpack_vectors(packed).view(np.uint32), x.view(np.uint32))
    y = x.copy()
    y[0, 2] = np.float32(3.14159)  # not a bfloat16
    assert pack_vectors(y).dtype == np.float32
    np.testing.assert_array_equal(pack_vectors(y), y)


def test_bfloat16_features_are_stored_in_half_the_bytes_with_the_reference_penalties():
    steps = groups(0, steps=6)
    ours = ErrorMemory(MedsConfig())
    ref = ReferenceMemory(approx_min_span_tree=False)
    for step in steps:
        keys = [k for k, _, f, _, _ in step for _ in f]
        feats = np.concatenate([g[2] for g in step])
        correct = np.concatenate([g[3] for g in step])
        s_ours, p_ours = ours.step(keys, feats, correct)
        s_ref, p_ref = ref.step(keys, feats, correct)
        np.testing.assert_array_equal(s_ours, s_ref)
        np.testing.assert_array_equal(p_ours, p_ref)
    assert (p_ref > 0).any()
    assert all(m.data.dtype == np.uint16 for m in ours.keys.values())
    assert ours.stats()["bytes_per_vector"] <= 28 + 3 * 4, "bf16 vector + answer id, label, tree parent"
    stored = ours.keys[("q0", False)].vectors
    assert stored.dtype == np.float32 and stored.shape[1] == D


def test_a_value_that_is_no_bfloat16_keeps_the_key_in_float32():
    memory = ErrorMemory(MedsConfig())
    a = bf16(np.random.default_rng(1).normal(size=(3, D)))
    b = np.random.default_rng(2).normal(size=(2, D)).astype(np.float32)
    memory.step(["k"] * 3, a, np.zeros(3, bool))
    assert memory.keys[("k", False)].data.dtype == np.uint16
    memory.step(["k"] * 2, b, np.zeros(2, bool))
    mem = memory.keys[("k", False)]
    assert mem.data.dtype == np.float32
    np.testing.assert_array_equal(mem.vectors, np.concatenate([a, b]))
    memory.step(["k"], a[:1], np.zeros(1, bool))
    assert mem.data.dtype == np.float32 and len(mem.vectors) == 6


@pytest.mark.parametrize("rounded", [True, False])
def test_save_load_round_trip_is_exact_and_bf16_files_are_smaller(tmp_path, rounded):
    steps = groups(3, rounded=rounded)
    memory = ErrorMemory(MedsConfig())
    play(memory, steps[:3])
    path = str(tmp_path / "m.npz")
    memory.save(path)
    with np.load(path) as data:
        assert ("vectors_bf16" in data.files) == rounded and ("vectors" in data.files) != rounded
    loaded = ErrorMemory.load(path)
    assert_same_memory(loaded, memory)
    for a, b in zip(play(loaded, steps[3:]), play(memory, steps[3:])):
        np.testing.assert_array_equal(a, b)


def test_version_1_state_with_float32_vectors_loads_packed():
    memory = ErrorMemory(MedsConfig())
    play(memory, groups(4)[:2])
    state = memory.state_dict()
    assert state["vectors"].dtype == np.float32  # the state itself is float32 vectors
    state["version"] = 1
    old = ErrorMemory(MedsConfig())
    old.load_state_dict(state)
    assert_same_memory(old, memory)


def test_a_frozen_memory_saves_what_it_was_while_the_memory_goes_on(tmp_path):
    steps = groups(5)
    memory = ErrorMemory(MedsConfig())
    play(memory, steps[:2])
    at_freeze = ErrorMemory(MedsConfig())
    at_freeze.load_state_dict(memory.state_dict())
    frozen = memory.freeze()
    play(memory, steps[2:])  # appends, re-clusters, new answers
    frozen.save(str(tmp_path / "frozen.npz"))
    assert_same_memory(ErrorMemory.load(str(tmp_path / "frozen.npz")), at_freeze)


def test_a_tail_loads_as_its_base_plus_its_groups(tmp_path):
    steps = groups(6, steps=7)
    memory = ErrorMemory(MedsConfig())
    play(memory, steps[:2])
    memory.save(str(tmp_path / "base.npz"))
    play(memory, steps[2:4])
    save_tail(str(tmp_path / "tail1.npz"), "base.npz", [g for s in steps[2:4] for g in s], MedsConfig())
    play(memory, steps[4:5])
    save_tail(str(tmp_path / "tail2.npz"), "tail1.npz", steps[4], MedsConfig())  # a tail of a tail
    assert memory_file_base(str(tmp_path / "tail2.npz")) == "tail1.npz"
    assert memory_file_base(str(tmp_path / "base.npz")) is None
    loaded = ErrorMemory.load(str(tmp_path / "tail2.npz"))
    assert_same_memory(loaded, memory)
    for a, b in zip(play(loaded, steps[5:]), play(memory, steps[5:])):
        np.testing.assert_array_equal(a, b)
    assert any((p > 0).any() for p in play(ErrorMemory.load(str(tmp_path / "tail2.npz")), steps[5:]))


def test_a_tail_of_an_empty_memory_and_a_tail_without_its_base(tmp_path):
    steps = groups(7, steps=3)
    memory = ErrorMemory(MedsConfig())
    play(memory, steps)
    save_tail(str(tmp_path / "t.npz"), None, [g for s in steps for g in s], MedsConfig())
    assert_same_memory(ErrorMemory.load(str(tmp_path / "t.npz")), memory)
    save_tail(str(tmp_path / "orphan.npz"), "gone.npz", steps[0], MedsConfig())
    with pytest.raises(FileNotFoundError, match="gone.npz"):
        ErrorMemory.load(str(tmp_path / "orphan.npz"))
    save_tail(str(tmp_path / "loop.npz"), "loop.npz", steps[0], MedsConfig())
    with pytest.raises(ValueError, match="chain of more than"):
        ErrorMemory.load(str(tmp_path / "loop.npz"))


def test_pending_lists_the_targeted_keys_waiting_for_a_clustering():
    memory = ErrorMemory(MedsConfig())  # target=wrong
    for key, t, f, ok, answers in groups(8, steps=1)[0]:
        memory.assign([key] * len(f), f, ok, step=t, answers=answers)
    assert set(memory.pending()) == {k for k in memory.keys if not k[1]} != set()
    memory.recluster(memory.pending())
    assert memory.pending() == []
    assert all(m.labels is None for k, m in memory.keys.items() if k[1]), "right keys are never clustered"
