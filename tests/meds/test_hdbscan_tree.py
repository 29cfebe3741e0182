"""The exact spanning tree, grown point by point, vs scipy's minimum spanning tree."""

import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

from openrlhf_meds.meds.clustering import normalize_rows
from openrlhf_meds.meds.hdbscan_tree import grow_mst, tree_edges


def test_grown_tree_is_a_minimum_spanning_tree():
    xn = normalize_rows(np.random.default_rng(7).normal(size=(300, 14)))
    parent, *_ = grow_mst(xn[:250])
    parent, eu, ev, ew = grow_mst(xn, parent)
    assert (parent == -1).sum() == 1 and len(parent) == 300 and len(ew) == 299
    assert (np.diff(ew) >= 0).all()  # Kruskal's order: the single-linkage merges
    child = np.nonzero(parent >= 0)[0]
    ours = np.linalg.norm(xn[child] - xn[parent[child]], axis=1).sum()
    best = minimum_spanning_tree(squareform(pdist(xn))).sum()
    assert ours == pytest.approx(best, rel=1e-12) and ew.sum() == pytest.approx(best, rel=1e-12)
    # the parent array's edges are the accepted ones
    tu, tv, tw = tree_edges(xn, parent)
    assert {frozenset(e) for e in zip(tu, tv)} == {frozenset(e) for e in zip(eu, ev)}
    np.testing.assert_allclose(np.sort(tw), ew, rtol=1e-12)


def test_a_tree_larger_than_the_rows_is_refused():
    with pytest.raises(ValueError, match="spans 5 rows"):
        grow_mst(np.ones((3, 3)), np.full(5, -1, np.int32))
