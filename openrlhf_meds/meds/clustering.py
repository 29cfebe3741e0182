"""Exact HDBSCAN(min_cluster_size=2, min_samples=1, euclidean) for one key's memory, fast.

With min_samples=1 the mutual-reachability distance equals the Euclidean distance, so
HDBSCAN is: minimum spanning tree -> single-linkage tree -> condensed tree -> stability ->
excess-of-mass selection. We keep each key's minimum spanning tree between steps and insert
the step's new points into it (exact, O(stored) per point, no sort of all pairs), then run
the rest of HDBSCAN as compiled loops that follow the hdbscan package's semantics exactly
(same traversal order, same float32 accumulation in the excess-of-mass comparison).

Cluster *numbers* matter (a kNN vote tie goes to the smallest label), so we also number
clusters as the package does: its Boruvka spanning tree decides left and right in the
single-linkage tree, and `_boruvka_order` replays it on our exact tree.

Bitwise-identical rows (bf16-rounded features, a policy that repeats one response) give
zero-weight edges, and which copy of a row the package's KD-tree query returns first sets
its union-find roots, hence its Boruvka order and its cluster numbers. The partition does
not depend on that choice, except when 4+ copies lie directly in the root cluster (they are
split at distance 0 into clusters or fall out as noise). So `recluster` gives the package's
partition, replaying the package where the partition needs it, and `package_numbering` gives
its numbers where a vote tie needs them: settled from single-linkage depths when it can, else
by replaying the package's Boruvka from its own KD-tree query (`_boruvka_replay`). Only where
that replay cannot be exact (copies of a row still apart after its first round, equal
distances between distinct rows, more than 60 dims) do we call the package itself.

One documented difference from calling `hdbscan.HDBSCAN` as the official code does: the
package's default spanning tree is approximate (`approx_min_span_tree=True`) and is
occasionally not minimal; ours is exact, i.e. we equal the package with
`approx_min_span_tree=False` (for features of up to 60 dims, where it uses Boruvka).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["normalize_rows", "package_labels", "package_numbering", "recluster"]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows in float64, exactly as the reference does before HDBSCAN."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@njit(cache=True, nogil=True)
def _dist2(xn, i, j):
    # Squared distance summed in order, as the hdbscan package's C loop does; the MST only
    # compares distances, so we take the square root of accepted edges alone.
    s = 0.0
    for k in range(xn.shape[1]):
        t = xn[i, k] - xn[j, k]
        s += t * t
    return s


@njit(cache=True, nogil=True)
def _labels(n, eu, ev, ew):
    """HDBSCAN labels (min_cluster_size=2) from MST edges sorted by weight. Also returns
    whether a zero-weight subtree of 4 or more points lies in the root cluster (see
    `recluster`) and, per label, the single-linkage depth of the split that made the cluster
    (cluster numbers grow with it: the package numbers clusters breadth first)."""
    labels = np.full(n, -1, np.int64)
    root_ties = False
    if n < 2:
        return labels, root_ties, np.empty(0, np.int64)
    # 1. single-linkage tree, as hdbscan's label(): row i merges find(eu), find(ev)
    uf = np.full(2 * n - 1, -1, np.int64)
    size = np.zeros(2 * n - 1, np.int64)
    size[:n] = 1
    left = np.empty(n - 1, np.int64)
    right = np.empty(n - 1, np.int64)
    for i in range(n - 1):
        roots = np.empty(2, np.int64)
        for s in range(2):
            x = eu[i] if s == 0 else ev[i]
            r = x
            while uf[r] != -1:
                r = uf[r]
            while x != r and uf[x] != r:  # path compression
                nx = uf[x]
                uf[x] = r
                x = nx
            roots[s] = r
        a, b = roots[0], roots[1]
        left[i], right[i] = a, b
        size[n + i] = size[a] + size[b]
        uf[a] = n + i
        uf[b] = n + i
    # 2. condensed tree, breadth first from the root (left before right). With
    # min_cluster_size=2 a side that is too small to be a cluster is a single point.
    root = 2 * n - 2
    relabel = np.empty(2 * n - 1, np.int64)
    relabel[root] = n
    depth = np.zeros(2 * n - 1, np.int64)
    split_depth = np.zeros(n, np.int64)  # per condensed cluster id - n
    r_parent = np.empty(2 * n, np.int64)
    r_child = np.empty(2 * n, np.int64)
    r_lam = np.empty(2 * n)
    r_size = np.empty(2 * n, np.int64)
    pos = 0
    next_label = n + 1
    queue = np.empty(2 * n - 1, np.int64)
    queue[0] = root
    head, tail = 0, 1
    while head < tail:
        node = queue[head]
        head += 1
        if node < n:
            continue
        lft, rgt = left[node - n], right[node - n]
        queue[tail] = lft
        queue[tail + 1] = rgt
        tail += 2
        depth[lft] = depth[rgt] = depth[node] + 1
        d = ew[node - n]
        lam = 1.0 / d if d > 0.0 else np.inf
        lc = size[lft]
        rc = size[rgt]
        p = relabel[node]
        if d == 0.0 and p == n and lc + rc >= 4:
            root_ties = True
        if lc >= 2 and rc >= 2:
            for ch, cs in ((lft, lc), (rgt, rc)):
                split_depth[next_label - n] = depth[node]
                relabel[ch] = next_label
                next_label += 1
                r_parent[pos], r_child[pos], r_lam[pos], r_size[pos] = p, relabel[ch], lam, cs
                pos += 1
        elif lc < 2 and rc < 2:
            r_parent[pos], r_child[pos], r_lam[pos], r_size[pos] = p, lft, lam, 1
            r_parent[pos + 1], r_child[pos + 1], r_lam[pos + 1], r_size[pos + 1] = p, rgt, lam, 1
            pos += 2
        elif lc < 2:
            relabel[rgt] = p
            r_parent[pos], r_child[pos], r_lam[pos], r_size[pos] = p, lft, lam, 1
            pos += 1
        else:
            relabel[lft] = p
            r_parent[pos], r_child[pos], r_lam[pos], r_size[pos] = p, rgt, lam, 1
            pos += 1
    n_clusters = next_label - n
    if n_clusters < 2:
        return labels, root_ties, np.empty(0, np.int64)
    # 3. stability of each cluster: sum over its rows of (lambda - birth) * size
    birth = np.zeros(n_clusters)
    cluster_parent = np.full(n_clusters, -1, np.int64)
    for i in range(pos):
        if r_size[i] > 1:
            birth[r_child[i] - n] = r_lam[i]
            cluster_parent[r_child[i] - n] = r_parent[i] - n
    stability = np.zeros(n_clusters)
    for i in range(pos):
        c = r_parent[i] - n
        stability[c] += (r_lam[i] - birth[c]) * r_size[i]
    # 4. excess of mass, children before parents (ids grow downwards; the two children of
    # a split get consecutive ids, left first). hdbscan sums the children's stability in a
    # C float (float32), left then right: we do the same so near-ties break alike.
    first_child = np.full(n_clusters, -1, np.int64)
    for c in range(n_clusters - 1, 0, -1):
        first_child[cluster_parent[c]] = c
    picked = np.zeros(n_clusters, np.bool_)
    for c in range(n_clusters - 1, 0, -1):
        s = np.float32(0.0)
        f = first_child[c]
        if f >= 0:
            s = np.float32(np.float64(s) + stability[f])
            s = np.float32(np.float64(s) + stability[f + 1])
        if np.float64(s) > stability[c]:
            stability[c] = np.float64(s)
        else:
            picked[c] = True
    # a cluster is selected if picked and no ancestor was picked (ids: parents first)
    selected_anc = np.full(n_clusters, -1, np.int64)  # selected ancestor-or-self
    number = np.full(n_clusters, -1, np.int64)
    count = 0
    for c in range(1, n_clusters):
        a = selected_anc[cluster_parent[c]]
        if a == -1 and picked[c]:
            a = c
            number[c] = count
            count += 1
        selected_anc[c] = a
    # 5. each point takes the selected cluster above the cluster it fell out of
    for i in range(pos):
        if r_size[i] == 1:
            a = selected_anc[r_parent[i] - n]
            labels[r_child[i]] = number[a] if a >= 0 else -1
    label_depth = np.empty(count, np.int64)
    for c in range(1, n_clusters):
        if number[c] >= 0:
            label_depth[number[c]] = split_depth[c]
    return labels, root_ties, label_depth


@njit(cache=True, nogil=True)
def _tree_order(n, eu, ev, ne):
    """DFS preorder of a tree (edges eu/ev[:ne] over vertices 0..n-1) from vertex 0, with
    each vertex's parent vertex and parent edge id."""
    deg = np.zeros(n + 1, np.int64)
    for e in range(ne):
        deg[eu[e] + 1] += 1
        deg[ev[e] + 1] += 1
    for i in range(n):
        deg[i + 1] += deg[i]
    fill = deg[:-1].copy()
    nbr = np.empty(2 * ne, np.int64)
    nbe = np.empty(2 * ne, np.int64)
    for e in range(ne):
        a, b = eu[e], ev[e]
        nbr[fill[a]], nbe[fill[a]] = b, e
        fill[a] += 1
        nbr[fill[b]], nbe[fill[b]] = a, e
        fill[b] += 1
    order = np.empty(n, np.int64)
    up_vertex = np.full(n, -1, np.int64)
    up_edge = np.full(n, -1, np.int64)
    seen = np.zeros(n, np.bool_)
    stack = np.empty(n, np.int64)
    stack[0] = 0
    seen[0] = True
    sp, k = 1, 0
    while sp > 0:
        sp -= 1
        u = stack[sp]
        order[k] = u
        k += 1
        for t in range(deg[u], deg[u + 1]):
            w = nbr[t]
            if not seen[w]:
                seen[w] = True
                up_vertex[w], up_edge[w] = u, nbe[t]
                stack[sp] = w
                sp += 1
    return order, up_vertex, up_edge


@njit(cache=True, nogil=True)
def _surviving_star(xn, s, m, order, up_vertex, up_edge, tree_w, keep):
    """Set keep[u] for the tree vertices u whose edge (s, u) is in MST(tree + star(s)).

    Walking the tree bottom-up, each tree edge (u, c) closes one cycle through s and the
    heaviest edge of that cycle is dropped. top[u] is the heaviest edge on u's current
    path to s: star edge u (id u) or tree edge e (id m + e).
    """
    top = np.arange(m)
    top_w = np.empty(m)
    for u in range(m):
        top_w[u] = _dist2(xn, s, u)
    keep[:m] = True
    for idx in range(m - 1, 0, -1):
        c = order[idx]
        u = up_vertex[c]
        te_w = tree_w[up_edge[c]]
        if te_w >= top_w[c] and te_w >= top_w[u]:
            continue  # the tree edge (u, c) is the heaviest: it goes
        if top_w[c] >= top_w[u]:
            if top[c] < m:
                keep[top[c]] = False
        else:
            if top[u] < m:
                keep[top[u]] = False
            # u now reaches s through c
            if te_w >= top_w[c]:
                top[u], top_w[u] = m + up_edge[c], te_w
            else:
                top[u], top_w[u] = top[c], top_w[c]


@njit(cache=True, nogil=True)
def _recluster(xn, parent):
    n = xn.shape[0]
    m = parent.shape[0]
    # Candidate edges: the old tree, each new point's surviving star edges, new-new pairs.
    # (An edge that is not in MST(tree + star(s)) is the heaviest on some cycle, so it is
    # in no MST of a larger graph either.)
    cap = max(m - 1, 0) + (n - m) * n
    cu = np.empty(cap, np.int64)
    cv = np.empty(cap, np.int64)
    cw = np.empty(cap)  # squared distances
    ne = 0
    for i in range(m):
        if parent[i] >= 0:
            cu[ne], cv[ne], cw[ne] = i, parent[i], _dist2(xn, i, parent[i])
            ne += 1
    order, up_vertex, up_edge = _tree_order(m, cu, cv, ne)
    tree_w = cw[:ne].copy()
    keep = np.ones(m, np.bool_)
    for s in range(m, n):
        if m > 1:
            _surviving_star(xn, s, m, order, up_vertex, up_edge, tree_w, keep)
        for u in range(m):
            if keep[u]:
                cu[ne], cv[ne], cw[ne] = u, s, _dist2(xn, s, u)
                ne += 1
        for t in range(m, s):
            cu[ne], cv[ne], cw[ne] = t, s, _dist2(xn, s, t)
            ne += 1
    # Kruskal: the accepted edges, in weight order, are the single-linkage merges.
    srt = np.argsort(cw[:ne], kind="mergesort")
    uf = np.arange(n)
    k = 0
    eu = np.empty(n, np.int64)
    ev = np.empty(n, np.int64)
    ew = np.empty(n)
    for j in srt:
        a, b = cu[j], cv[j]
        while uf[a] != a:
            uf[a] = uf[uf[a]]
            a = uf[a]
        while uf[b] != b:
            uf[b] = uf[uf[b]]
            b = uf[b]
        if a != b:
            uf[a] = b
            eu[k], ev[k], ew[k] = cu[j], cv[j], np.sqrt(cw[j])
            k += 1
            if k == n - 1:
                break
    parent_of = _tree_order(n, eu, ev, k)[1].astype(np.int32)  # rooted at 0: root is -1
    return parent_of, eu[:k], ev[:k], ew[:k]


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


@njit(cache=True, nogil=True)
def _tree_edges(xn, parent):
    """Edges (child, parent, weight) of a parent-array tree, weights as `_recluster` has them."""
    child = np.nonzero(parent >= 0)[0]
    eu = child.astype(np.int64)
    ev = np.empty(len(child), np.int64)
    ew = np.empty(len(child))
    for j in range(len(child)):
        ev[j] = parent[child[j]]
        ew[j] = np.sqrt(_dist2(xn, child[j], ev[j]))
    return eu, ev, ew


def _count(counters, name: str):
    if counters is not None:
        counters[name] += 1


def package_labels(xn: np.ndarray, approx: bool = False) -> np.ndarray:
    """The hdbscan package's labels (min_cluster_size 2, min_samples 1, euclidean): with the
    exact spanning tree, what `recluster` equals; `approx=True` is how the official code calls
    it (`--meds.clustering hdbscan`)."""
    import hdbscan  # lazily: only clustering=hdbscan and the cases `recluster` cannot reproduce need it

    if len(xn) < 2:
        return np.full(len(xn), -1, np.int64)
    model = hdbscan.HDBSCAN(min_cluster_size=2, min_samples=1, metric="euclidean", approx_min_span_tree=approx)
    return model.fit(xn).labels_.astype(np.int64)


def _positive_ties(w: np.ndarray) -> bool:
    """Whether two MST edges between distinct rows have equal weights."""
    w = np.sort(w)
    return bool(((w[1:] == w[:-1]) & (w[1:] > 0.0)).any())


def _sorted_labels(n, bu, bv, bw):
    # numpy's default argsort, as the package sorts its tree (same order for equal weights)
    order = np.argsort(bw)
    return _labels(n, bu[order], bv[order], bw[order])


def _replayed_labels(xn: np.ndarray, eu, ev, ew, counters) -> np.ndarray:
    """Labels numbered as the package numbers them on an MST with zero-weight edges, from a
    replay of its Boruvka; the package itself where the replay cannot be exact."""
    n = len(xn)
    if xn.shape[1] > 60 or _positive_ties(ew):
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


_CHUNK = 64


def recluster(xn: np.ndarray, parent: np.ndarray | None = None, counters=None) -> tuple[np.ndarray, np.ndarray]:
    """HDBSCAN(min_cluster_size=2, min_samples=1) of the rows of `xn` (L2-normalised).

    `parent` is the exact MST of the first len(parent) rows from an earlier call (an int32
    parent array, root -1); only the remaining rows are inserted. Returns the MST of all
    rows (to pass next time) and the labels (noise -1): the package's partition always, and
    its cluster numbers unless `xn` has bitwise-identical rows (see `package_numbering`).
    `counters` (a Counter, optional) counts `tie_replays` and `tie_fallbacks`.
    """
    xn = np.ascontiguousarray(xn, dtype=np.float64)
    if len(xn) == 0:
        return np.empty(0, np.int32), np.empty(0, np.int64)
    if parent is None or len(parent) == 0:
        parent = np.full(1, -1, np.int32)
    if len(parent) > len(xn):
        raise ValueError(f"the MST spans {len(parent)} rows but only {len(xn)} were given")
    parent = np.asarray(parent, np.int32)
    # Many new rows (a rebuild): insert them in chunks, so that the new-new pairs stay few.
    while len(xn) - len(parent) > _CHUNK:
        parent = _recluster(xn[: len(parent) + _CHUNK], parent)[0]
    parent, eu, ev, ew = _recluster(xn, parent)
    labels, root_ties, _ = _sorted_labels(len(xn), *_boruvka_order(len(xn), eu, ev, ew))
    if root_ties or _positive_ties(ew):
        # The partition itself depends on the package's order of equal-weight merges when 4+
        # copies of one row lie directly in the root cluster (split at distance 0 into
        # clusters, or falling out as noise) or when distinct rows are equally far apart.
        labels = _replayed_labels(xn, eu, ev, ew, counters)
    return parent, labels


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
    distinct rows, more than 60 dims). `parent`: the MST of `xn` from `recluster`, if at hand.
    Counts as `recluster` does.
    """
    xn = np.ascontiguousarray(xn, dtype=np.float64)
    if len(xn) < 2 or len(votes) == 0:
        return None
    if xn.shape[1] > 60:
        _count(counters, "tie_fallbacks")
        return package_labels(xn)
    if parent is None or len(parent) != len(xn):
        parent = recluster(xn)[0]
    eu, ev, ew = _tree_edges(xn, np.asarray(parent, np.int32))
    ties = _positive_ties(ew)
    if not ties and ew.min() > 0.0:
        return None
    ours, root_ties, depth = _sorted_labels(len(xn), *_boruvka_order(len(xn), eu, ev, ew))
    if not (ties or root_ties) and np.array_equal(ours, labels) and _votes_settled(votes, ours, depth):
        return None
    return _replayed_labels(xn, eu, ev, ew, counters)


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
