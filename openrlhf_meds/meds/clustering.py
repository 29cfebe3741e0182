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

One documented difference from calling `hdbscan.HDBSCAN` as the official code does: the
package's default spanning tree is approximate (`approx_min_span_tree=True`) and is
occasionally not minimal; ours is exact, i.e. we equal the package with
`approx_min_span_tree=False` (for features of up to 60 dims, where it uses Boruvka).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["normalize_rows", "recluster"]


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
    """HDBSCAN labels (min_cluster_size=2) from MST edges sorted by weight."""
    labels = np.full(n, -1, np.int64)
    if n < 2:
        return labels
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
        d = ew[node - n]
        lam = 1.0 / d if d > 0.0 else np.inf
        lc = size[lft]
        rc = size[rgt]
        p = relabel[node]
        if lc >= 2 and rc >= 2:
            for ch, cs in ((lft, lc), (rgt, rc)):
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
        return labels
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
    return labels


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
    uf = np.arange(n)
    rank = np.zeros(n, np.int64)
    best_w = np.full(n, np.inf)
    best_p = np.full(n, -1, np.int64)
    best_q = np.full(n, -1, np.int64)
    comp = np.arange(n)
    k = 0
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
    return bu, bv, bw


_CHUNK = 64


def recluster(xn: np.ndarray, parent: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """HDBSCAN(min_cluster_size=2, min_samples=1) of the rows of `xn` (L2-normalised).

    `parent` is the exact MST of the first len(parent) rows from an earlier call (an int32
    parent array, root -1); only the remaining rows are inserted. Returns the MST of all
    rows (to pass next time) and the labels (noise -1), numbered as the package numbers them.
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
    bu, bv, bw = _boruvka_order(len(xn), eu, ev, ew)
    # numpy's default argsort, as the package sorts its tree (same order for equal weights)
    order = np.argsort(bw)
    return parent, _labels(len(xn), bu[order], bv[order], bw[order])
