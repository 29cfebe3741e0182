"""How the hdbscan package numbers its clusters, replayed on our exact spanning tree.

Cluster *numbers* matter (a kNN vote tie goes to the smallest label). The package's Boruvka
spanning tree decides left and right in the single-linkage tree, hence the numbers, and
`numbered_labels` replays its order on our tree. Bitwise-identical rows (bf16-rounded
features, a policy that repeats one response) give zero-weight edges, and which copy of a row
the package's KD-tree query returns first sets its union-find roots, hence its Boruvka order
and its numbers: `replayed_labels` replays the package's Boruvka from its own query
(`_boruvka_replay`), and `package_numbering` says when a vote needs that. Only where the replay
cannot be exact (copies of a row still apart after its first round, equal distances between
distinct rows, more than 60 dims) do we call the package itself (`package_labels`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .hdbscan_tree import grow_mst, tree_edges, tree_labels

__all__ = ["numbered_labels", "package_labels", "package_numbering", "positive_ties", "replayed_labels"]


@njit(cache=True, nogil=True)
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, nogil=True)
def _union_by_rank(parent, rank, x, y):
    # hdbscan's BoruvkaUnionFind.union_: on equal rank the root of x wins.
    x, y = _find(parent, x), _find(parent, y)
    if rank[x] < rank[y]:
        parent[x] = y
    elif rank[x] > rank[y]:
        parent[y] = x
    else:
        rank[x] += 1
        parent[y] = x


@njit(cache=True, nogil=True)
def _boruvka_rounds(n, eu, ev, ew, uf, rank, bu, bv, bw, k):
    """Boruvka rounds on the MST edges from the union-find state `uf`/`rank` with k edges
    already in bu/bv/bw: each round joins every component to its nearest outside point,
    components in ascending union-find root order (the package's `components()`). Returns k."""
    m = eu.shape[0]
    best_w = np.full(n, np.inf)
    best_p = np.full(n, -1, np.int64)
    best_q = np.full(n, -1, np.int64)
    comp = np.empty(n, np.int64)
    for x in range(n):
        comp[x] = _find(uf, x)
    while k < m:
        best_w[:] = np.inf
        for e in range(m):
            cu, cv = comp[eu[e]], comp[ev[e]]
            if cu == cv:
                continue
            if ew[e] < best_w[cu]:
                best_w[cu], best_p[cu], best_q[cu] = ew[e], eu[e], ev[e]
            if ew[e] < best_w[cv]:
                best_w[cv], best_p[cv], best_q[cv] = ew[e], ev[e], eu[e]
        for c in range(n):  # roots in ascending order
            if comp[c] != c or best_p[c] < 0 or best_w[c] == np.inf:
                continue
            p, q = best_p[c], best_q[c]
            if _find(uf, p) != _find(uf, q):
                bu[k], bv[k], bw[k] = p, q, best_w[c]
                k += 1
                _union_by_rank(uf, rank, p, q)
                if k == m:
                    break
        for x in range(n):
            comp[x] = _find(uf, x)
    return k


@njit(cache=True, nogil=True)
def _boruvka_order(n, eu, ev, ew):
    """The MST edges in the order and orientation in which the hdbscan package's exact
    Boruvka adds them (it decides left/right in the single-linkage tree, hence the cluster
    numbers). Round 0 joins every point to its nearest neighbour, points in index order;
    each later round joins every component to its nearest outside point, components in
    ascending union-find root order. With distinct weights a component's nearest outside
    point is across the lightest MST edge leaving it, so replaying on the MST is exact."""
    m = eu.shape[0]
    bu = np.empty(m, np.int64)
    bv = np.empty(m, np.int64)
    bw = np.empty(m)
    _boruvka_rounds(n, eu, ev, ew, np.arange(n), np.zeros(n, np.int64), bu, bv, bw, 0)
    return bu, bv, bw


@njit(cache=True, nogil=True)
def _boruvka_replay(n, eu, ev, ew, knn_ind, knn_dist):
    """`_boruvka_order` for MSTs with zero-weight edges (bitwise-identical rows), with round
    0 taken from the package's own 2-nearest-neighbour query (`knn_ind`, `knn_dist`): which
    copy of a row a point joins decides union-find roots, hence the order of later rounds.
    Later rounds are `_boruvka_order`'s, exact when distinct rows are at distinct distances
    (the caller checks) and each row's copies are in one component. Returns (bu, bv, bw, ok);
    ok is False when copies of one row are still in different components after round 0 (the
    package's later choice among them is not reproducible)."""
    m = eu.shape[0]
    bu = np.empty(m, np.int64)
    bv = np.empty(m, np.int64)
    bw = np.empty(m)
    uf = np.arange(n)
    rank = np.zeros(n, np.int64)
    # The package's round 0 (KDTreeBoruvkaAlgorithm._compute_bounds, min_samples=1): the
    # core distance is the squared distance to the 2nd query result; a point joins the
    # first result other than itself whose core distance is not larger than its own.
    core = knn_dist[:, 1] * knn_dist[:, 1]
    k = 0
    for c in range(n):
        if k == m:
            break
        q = -1
        for i in range(2):
            t = knn_ind[c, i]
            if t != c and core[t] <= core[c]:
                q = t
                break
        if q >= 0 and _find(uf, c) != _find(uf, q):
            bu[k], bv[k], bw[k] = c, q, np.sqrt(core[c])
            k += 1
            _union_by_rank(uf, rank, c, q)
    for e in range(m):
        if ew[e] == 0.0 and _find(uf, eu[e]) != _find(uf, ev[e]):
            return bu, bv, bw, False
    _boruvka_rounds(n, eu, ev, ew, uf, rank, bu, bv, bw, k)
    return bu, bv, bw, True


def _count(counters, name: str):
    if counters is not None:
        counters[name] += 1


def package_labels(xn: np.ndarray, approx: bool = False) -> np.ndarray:
    """The hdbscan package's labels (min_cluster_size 2, min_samples 1, euclidean): with the
    exact spanning tree, what `clustering.recluster` equals; `approx=True` is how the official code calls
    it (`--meds.clustering hdbscan`)."""
    import hdbscan  # lazily: only clustering=hdbscan and the cases `recluster` cannot reproduce need it

    if len(xn) < 2:
        return np.full(len(xn), -1, np.int64)
    model = hdbscan.HDBSCAN(min_cluster_size=2, min_samples=1, metric="euclidean", approx_min_span_tree=approx)
    return model.fit(xn).labels_.astype(np.int64)


def positive_ties(w: np.ndarray) -> bool:
    """Whether two MST edges between distinct rows have equal weights."""
    w = np.sort(w)
    return bool(((w[1:] == w[:-1]) & (w[1:] > 0.0)).any())


def _sorted_labels(n, bu, bv, bw):
    # numpy's default argsort, as the package sorts its tree (same order for equal weights)
    order = np.argsort(bw)
    return tree_labels(n, bu[order], bv[order], bw[order])


def replayed_labels(xn: np.ndarray, eu, ev, ew, counters) -> np.ndarray:
    """Labels numbered as the package numbers them on an MST with zero-weight edges, from a
    replay of its Boruvka; the package itself where the replay cannot be exact."""
    n = len(xn)
    if xn.shape[1] > 60 or positive_ties(ew):
        # Prim's algorithm above 60 dims; equal distances between distinct rows: the
        # replay assumes neither.
        _count(counters, "tie_fallbacks")
        return package_labels(xn)
    from sklearn.neighbors import KDTree  # the package's own query, called as it calls it

    tree = KDTree(xn, metric="euclidean", leaf_size=40)
    if n > 16384:  # hdbscan queries in 4 chunks above this size (core_dist_n_jobs=4)
        step = n // 4
        parts = [
            tree.query(xn[i * step : (i + 1) * step if i < 3 else n], k=2, dualtree=True, breadth_first=True)
            for i in range(4)
        ]
        knn_dist = np.vstack([p[0] for p in parts])
        knn_ind = np.vstack([p[1] for p in parts])
    else:
        knn_dist, knn_ind = tree.query(xn, k=2, dualtree=True, breadth_first=True)
    bu, bv, bw, ok = _boruvka_replay(n, eu, ev, ew, knn_ind.astype(np.int64), knn_dist)
    if not ok:
        _count(counters, "tie_fallbacks")
        return package_labels(xn)
    _count(counters, "tie_replays")
    return _sorted_labels(n, bu, bv, bw)[0]


def numbered_labels(n: int, eu, ev, ew):
    """`tree_labels` of an MST (edges eu/ev/ew), numbered as the package numbers them when its
    weights are distinct: (labels, root_ties, label_depth)."""
    return _sorted_labels(n, *_boruvka_order(n, eu, ev, ew))


def package_numbering(
    xn: np.ndarray, labels: np.ndarray, votes: np.ndarray, parent: np.ndarray | None = None, counters=None
) -> np.ndarray | None:
    """The package's labels for `xn` if a kNN vote could go otherwise under its cluster
    numbers than under `recluster`'s `labels`; None if every vote's |C| is the package's.

    `votes` [r, k]: the labels of the k neighbours of each vote that ties between clusters
    (the tie goes to the smallest number). Numbers can differ only on keys with
    bitwise-identical rows, where which copy the package's KD-tree query returns first
    decides its Boruvka order. The package numbers clusters breadth first, so a tie is
    settled when the tied clusters nearest the root of the single-linkage tree have one size;
    otherwise we replay the package's Boruvka from its own query, and call the package where
    that cannot be exact (copies of a row apart after its first round, equal distances between
    distinct rows, more than 60 dims). `parent`: the MST of `xn` from `clustering.recluster`,
    if at hand. Counts as `clustering.recluster` does.
    """
    xn = np.ascontiguousarray(xn, dtype=np.float64)
    if len(xn) < 2 or len(votes) == 0:
        return None
    if xn.shape[1] > 60:
        _count(counters, "tie_fallbacks")
        return package_labels(xn)
    if parent is None or len(parent) != len(xn):
        parent = grow_mst(xn)[0]
    eu, ev, ew = tree_edges(xn, np.asarray(parent, np.int32))
    ties = positive_ties(ew)
    if not ties and ew.min() > 0.0:
        return None
    ours, root_ties, depth = numbered_labels(len(xn), eu, ev, ew)
    if not (ties or root_ties) and np.array_equal(ours, labels) and _votes_settled(votes, ours, depth):
        return None
    return replayed_labels(xn, eu, ev, ew, counters)


def _votes_settled(votes: np.ndarray, labels: np.ndarray, depth: np.ndarray) -> bool:
    """Whether, in every vote, the tied clusters made by the shallowest split (the package's
    smallest numbers are among them) all have the same size."""
    counts = np.bincount(labels + 1)
    for row in votes:
        values, n = np.unique(row, return_counts=True)
        tied = values[n == n.max()]
        if tied[0] == -1:
            continue  # noise wins a tie under any numbering
        first = tied[depth[tied] == depth[tied].min()]
        if (counts[first + 1] != counts[first[0] + 1]).any():
            return False
    return True
