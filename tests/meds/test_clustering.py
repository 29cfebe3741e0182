"""Exact incremental HDBSCAN vs the hdbscan package (exact spanning tree) and scipy's MST."""

import hdbscan
import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

from openrlhf_meds.meds.clustering import normalize_rows, recluster


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


def test_tree_is_a_minimum_spanning_tree():
    xn = features(7, 300, kind="random")
    parent, _ = recluster(xn[:250])
    parent, _ = recluster(xn, parent)
    assert (parent == -1).sum() == 1 and len(parent) == 300
    child = np.nonzero(parent >= 0)[0]
    ours = np.linalg.norm(xn[child] - xn[parent[child]], axis=1).sum()
    best = minimum_spanning_tree(squareform(pdist(xn))).sum()
    assert ours == pytest.approx(best, rel=1e-12)


def test_duplicates_give_the_package_partition():
    """Bitwise-identical rows: same partition as the package (its numbering among
    coincident rows depends on KD-tree internals; ErrorMemory handles that case)."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(60, 14))
    xn = normalize_rows(np.repeat(base, rng.integers(1, 6, 60), axis=0).astype(np.float32))
    _, ours = recluster(xn)
    theirs = package_labels(xn)
    np.testing.assert_array_equal(ours == -1, theirs == -1)
    pairs = set(zip(ours[ours >= 0], theirs[theirs >= 0]))
    assert len(pairs) == len(set(ours[ours >= 0])) == len(set(theirs[theirs >= 0]))


def test_tiny_inputs():
    assert recluster(np.empty((0, 3)))[1].shape == (0,)
    np.testing.assert_array_equal(recluster(np.ones((1, 3)))[1], [-1])
    np.testing.assert_array_equal(recluster(normalize_rows(np.eye(3)[:2]))[1], [-1, -1])
    with pytest.raises(ValueError, match="spans 5 rows"):
        recluster(np.ones((3, 3)), np.full(5, -1, np.int32))
