"""Exact HDBSCAN(min_cluster_size=2, min_samples=1, euclidean) for one key's memory, fast,
with the hdbscan package's labels: its partition and, where a vote needs them, its numbers.

Two rooms do the work:
- `hdbscan_tree.py`: each key's exact minimum spanning tree, kept between steps and grown by
  the step's new points, and HDBSCAN's labels from it (single-linkage tree, condensed tree,
  excess of mass) as the package computes them;
- `hdbscan_numbering.py`: how the package numbers clusters (its Boruvka order decides left
  and right in the single-linkage tree), replayed on our tree. A kNN vote tie goes to the
  smallest label, so numbers matter.

Bitwise-identical rows (bf16-rounded features, a policy that repeats one response) give
zero-weight edges. The partition does not depend on which copy of a row the package's
KD-tree query returns first, except when 4+ copies lie directly in the root cluster (they
are split at distance 0 into clusters or fall out as noise). So `recluster` gives the
package's partition, replaying the package where the partition needs it, and
`package_numbering` gives its numbers where a vote tie needs them.

One documented difference from calling `hdbscan.HDBSCAN` as the official code does: the
package's default spanning tree is approximate (`approx_min_span_tree=True`) and is
occasionally not minimal; ours is exact, i.e. we equal the package with
`approx_min_span_tree=False` (for features of up to 60 dims, where it uses Boruvka).
"""

from __future__ import annotations

import numpy as np

from .hdbscan_numbering import numbered_labels, package_labels, package_numbering, positive_ties, replayed_labels
from .hdbscan_tree import grow_mst

__all__ = ["normalize_rows", "package_labels", "package_numbering", "recluster"]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows in float64, exactly as the reference does before HDBSCAN."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
    parent, eu, ev, ew = grow_mst(xn, parent)
    labels, root_ties, _ = numbered_labels(len(xn), eu, ev, ew)
    if root_ties or positive_ties(ew):
        # The partition itself depends on the package's order of equal-weight merges when 4+
        # copies of one row lie directly in the root cluster (split at distance 0 into
        # clusters, or falling out as noise) or when distinct rows are equally far apart.
        labels = replayed_labels(xn, eu, ev, ew, counters)
    return parent, labels
