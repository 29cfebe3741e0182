"""HDBSCAN's trees for one key's memory (min_cluster_size=2, min_samples=1, euclidean).

With min_samples=1 the mutual-reachability distance is the Euclidean distance, so HDBSCAN is
the minimum spanning tree, then the single-linkage tree, condensed tree, stabilities and
excess-of-mass selection over it. `grow_mst` keeps a key's exact spanning tree between steps
and inserts new points into it (O(stored) per point, no sort of all pairs); `tree_labels`
runs the rest as a compiled loop that follows the hdbscan package's semantics exactly (same
traversal order, same float32 accumulation in the excess-of-mass comparison). How the package
*numbers* the clusters is `hdbscan_numbering.py`'s business.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["grow_mst", "tree_edges", "tree_labels"]

_CHUNK = 64


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
def tree_labels(n, eu, ev, ew):
    """HDBSCAN labels (min_cluster_size=2) from MST edges sorted by weight. Also returns
    whether a zero-weight subtree of 4 or more points lies in the root cluster (see
    `clustering.recluster`) and, per label, the single-linkage depth of the split that made the cluster
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
def _insert(xn, parent):
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


def grow_mst(xn: np.ndarray, parent: np.ndarray | None = None):
    """The exact MST of the rows of `xn` (L2-normalised), given `parent`, the MST of
    its first len(parent) rows (an int32 parent array, root -1; None: none). Returns the
    parent array of all rows (rooted at row 0) and its edges eu, ev, ew in weight order, as
    Kruskal accepted them: the single-linkage merges."""
    xn = np.ascontiguousarray(xn, dtype=np.float64)  # _dist2 sums in float64, in row order
    if parent is None or len(parent) == 0:
        parent = np.full(1, -1, np.int32)
    if len(parent) > len(xn):
        raise ValueError(f"the MST spans {len(parent)} rows but only {len(xn)} were given")
    parent = np.asarray(parent, np.int32)
    # Many new rows (a rebuild): insert them in chunks, so that the new-new pairs stay few.
    while len(xn) - len(parent) > _CHUNK:
        parent = _insert(xn[: len(parent) + _CHUNK], parent)[0]
    return _insert(xn, parent)


@njit(cache=True, nogil=True)
def tree_edges(xn, parent):
    """Edges (child, parent, weight) of a parent-array tree, weights as `grow_mst` has them."""
    child = np.nonzero(parent >= 0)[0]
    eu = child.astype(np.int64)
    ev = np.empty(len(child), np.int64)
    ew = np.empty(len(child))
    for j in range(len(child)):
        ev[j] = parent[child[j]]
        ew[j] = np.sqrt(_dist2(xn, child[j], ev[j]))
    return eu, ev, ew
