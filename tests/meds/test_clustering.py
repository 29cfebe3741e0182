"""Exact incremental HDBSCAN vs the hdbscan package (exact spanning tree): the partition and
the cluster numbers, so the numbering replay (`hdbscan_numbering.py`) is tested here too,
through `recluster`, `package_numbering` and `replayed_labels`."""

from collections import Counter
from itertools import combinations

import hdbscan
import numpy as np
import pytest

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.meds.clustering import normalize_rows, package_numbering, recluster
from openrlhf_meds.meds.hdbscan_numbering import replayed_labels
from openrlhf_meds.meds.hdbscan_tree import tree_edges
from openrlhf_meds.meds.reference import ReferenceMemory


def package_labels(xn):
    return hdbscan.HDBSCAN(min_cluster_size=2, min_samples=1, approx_min_span_tree=False).fit(xn).labels_


def features(seed, n, d=14, kind="clustered"):
    rng = np.random.default_rng(seed)
    if kind == "clustered":
        centers = rng.normal(size=(5, d)) * 3
        x = centers[rng.integers(0, 5, n)] + rng.normal(size=(n, d)) * 0.5
    else:
        x = rng.normal(size=(n, d))
    return normalize_rows(x.astype(np.float32))


def repeated(seed, n, frac, d=14):
    """Clustered features where a fraction `frac` of the rows repeat an earlier row bitwise
    (mostly the one before, as a policy repeating one response does; sometimes any)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(5, d)) * 3
    x = (centers[rng.integers(0, 5, n)] + rng.normal(size=(n, d)) * 0.5).astype(np.float32)
    for i in np.nonzero(rng.random(n) < frac)[0][1:]:
        x[i] = x[i - 1] if rng.random() < 0.8 else x[rng.integers(0, i)]
    return normalize_rows(x)


def same_partition(a, b):
    """Equal up to cluster numbers (noise is noise in both)."""
    pairs = set(zip(a[a >= 0], b[b >= 0]))
    return (a == -1).tolist() == (b == -1).tolist() and len(pairs) == len(set(a[a >= 0])) == len(set(b[b >= 0]))


@pytest.mark.parametrize("seed", range(12))
def test_labels_equal_package_including_numbers(seed):
    """Same labels, same numbers (the numbers decide kNN vote ties)."""
    rng = np.random.default_rng(seed)
    xn = features(
        seed, int(rng.integers(3, 500)), d=int(rng.choice([5, 14, 32])), kind=("clustered", "random")[seed % 2]
    )
    _, labels = recluster(xn)
    np.testing.assert_array_equal(labels, package_labels(xn))


@pytest.mark.parametrize("seed", range(6))
def test_incremental_insertion_equals_rebuild(seed):
    rng = np.random.default_rng(100 + seed)
    xn = features(seed, 400)
    parent, k = None, 0
    while k < len(xn):
        k = min(len(xn), k + int(rng.integers(1, 70)))
        parent, labels = recluster(xn[:k], parent)
        np.testing.assert_array_equal(labels, package_labels(xn[:k]))
    scratch_parent, scratch_labels = recluster(xn)
    np.testing.assert_array_equal(labels, scratch_labels)


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_repeated_rows_give_the_package_labels(frac, seed):
    """Bitwise-repeated rows: the package's partition from `recluster`; its numbers where a
    vote tie needs them from `package_numbering` (settled, or replayed from the package's
    KD-tree query); and the replay alone equals the package, numbers included."""
    n = int(np.random.default_rng(seed).integers(150, 600))
    xn = repeated(seed, n, frac)
    theirs = package_labels(xn)
    counters = Counter()
    parent, ours = recluster(xn, None, counters)
    assert same_partition(ours, theirs)
    if frac == 0:
        np.testing.assert_array_equal(ours, theirs)
    # every pair of clusters tied 1-1: settled pairs must give the package's |C|
    clusters = np.unique(ours[ours >= 0])
    votes = np.array(list(combinations(clusters, 2)))
    numbered = package_numbering(xn, ours, votes, parent, counters)
    if numbered is not None:
        np.testing.assert_array_equal(numbered, theirs)
    else:
        sizes = np.bincount(ours + 1)
        first = {c: theirs[np.argmax(ours == c)] for c in clusters}  # our cluster -> its number
        for a, b in votes:
            winner = a if first[a] < first[b] else b
            assert sizes[winner + 1] == sizes[min(a, b) + 1]
    if frac > 0:
        replay = Counter()
        np.testing.assert_array_equal(replayed_labels(xn, *tree_edges(xn, parent), replay), theirs)
        # Copies of a row can stay apart after the package's first Boruvka round (then the
        # package labels the key) only when there are 4 or more of them.
        copies = np.unique(xn, axis=0, return_counts=True)[1].max()
        assert replay["tie_replays"] == 1 or (copies >= 4 and replay["tie_fallbacks"] == 1), (copies, replay)


@pytest.mark.parametrize("seed", [0, 3, 5])
def test_replay_gives_the_package_numbers(seed):
    """Half the rows repeated: our own Boruvka numbers some clusters otherwise than the
    package (its KD-tree query picks which copy a point joins); the replay of the package's
    Boruvka from that query gives its numbers."""
    xn = repeated(seed, int(np.random.default_rng(seed).integers(150, 600)), 0.5)
    parent, ours = recluster(xn)
    theirs = package_labels(xn)
    assert same_partition(ours, theirs) and (ours != theirs).any()
    counters = Counter()
    np.testing.assert_array_equal(replayed_labels(xn, *tree_edges(xn, parent), counters), theirs)
    assert counters == {"tie_replays": 1}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 41, 120, 400])
def test_fully_collapsed_key(n):
    """All rows equal: the package splits them at distance 0 into clusters or not, depending
    on its tree (400 copies: three clusters); `recluster` replays it, numbers included."""
    row = np.random.default_rng(n).normal(size=(1, 14)).astype(np.float32)
    xn = normalize_rows(np.repeat(row, n, axis=0))
    counters = Counter()
    _, labels = recluster(xn, None, counters)
    np.testing.assert_array_equal(labels, package_labels(xn))
    assert counters["tie_replays"] + counters["tie_fallbacks"] == (n >= 4)
    # ... and with two other rows, the copies still directly in the root cluster
    xn = normalize_rows(np.vstack([np.repeat(row, n, axis=0), np.eye(14, dtype=np.float32)[:2]]))
    np.testing.assert_array_equal(recluster(xn)[1], package_labels(xn))


def test_package_fallback_is_counted():
    """Where the replay cannot be exact the package itself labels the key, and
    `tie_fallbacks` counts it: equal distances between distinct rows (a coarse lattice) and
    more than 60 dims."""
    grid = np.random.default_rng(0).integers(-2, 3, size=(200, 3)).astype(np.float32)
    xn = normalize_rows(grid[grid.any(axis=1)])
    counters = Counter()
    _, labels = recluster(xn, None, counters)
    np.testing.assert_array_equal(labels, package_labels(xn))
    assert counters["tie_fallbacks"] == 1 and counters["tie_replays"] == 0

    xn = repeated(3, 120, 0.3, d=64)
    parent, ours = recluster(xn)
    counters = Counter()
    clusters = np.unique(ours[ours >= 0])
    numbered = package_numbering(xn, ours, clusters[None, :2], parent, counters)
    np.testing.assert_array_equal(numbered, package_labels(xn))
    assert counters["tie_fallbacks"] == 1


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.5])
def test_memory_with_repeats_matches_reference(frac):
    """ErrorMemory's sizes and penalties equal the reference step's with bitwise-repeated
    features, including a prompt whose policy has collapsed (every rollout the same)."""
    rng = np.random.default_rng(int(frac * 10))
    dim, prompts = 6, ["a", "b", "c", "collapsed"]  # 6 dims: many small clusters, so vote ties
    centers = {p: rng.normal(size=(3, dim)) * 2 for p in prompts}
    stuck = rng.normal(size=dim)
    ours = ErrorMemory(MedsConfig(target="both"))
    ref = ReferenceMemory(target="both", approx_min_span_tree=False)
    for step in range(6):
        keys = [p for p in prompts for _ in range(16)]
        feats = np.array([centers[p][rng.integers(3)] + rng.normal(size=dim) for p in keys])
        for i in np.nonzero(rng.random(len(keys)) < frac)[0][1:]:
            feats[i] = feats[i - 1]
        feats[[i for i, p in enumerate(keys) if p == "collapsed"]] = stuck
        feats = feats.astype(np.float32)
        correct = rng.random(len(keys)) < 0.3
        s_ref, p_ref = ref.step(keys, feats, correct)
        s_our, p_our = ours.step(keys, feats, correct)
        np.testing.assert_array_equal(s_our, s_ref, err_msg=f"step {step}")
        np.testing.assert_array_equal(p_our, p_ref, err_msg=f"step {step}")
    stats = ours.stats()
    assert stats["penalized"] > 50
    assert stats["tie_replays"] > 0  # the collapsed keys hold 4+ copies in their root cluster
    assert stats.get("tie_fallbacks", 0) == 0
    assert stats["vote_ties"] > 0, "the scenario must contain numbering-dependent ties"


def test_tiny_inputs():
    assert recluster(np.empty((0, 3)))[1].shape == (0,)
    np.testing.assert_array_equal(recluster(np.ones((1, 3)))[1], [-1])
    np.testing.assert_array_equal(recluster(normalize_rows(np.eye(3)[:2]))[1], [-1, -1])
