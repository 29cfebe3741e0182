"""The reference MEDS memory step, written plainly as the official code does it.

Float64 lists, one sklearn NearestNeighbors fit per rollout, hdbscan on each key's whole
memory after every step. Slow by design: it is the yardstick that `ErrorMemory` must match
exactly (tests/meds/test_memory_parity.py) and beat (benchmarks/memory_step.py). It shares
no code with `ErrorMemory`.
"""

from __future__ import annotations

import hdbscan
import numpy as np
from sklearn.neighbors import NearestNeighbors


class ReferenceMemory:
    """Spec §3 reference semantics; `approx_min_span_tree=True` is the package default
    the official code runs with, False gives the exact HDBSCAN that ErrorMemory computes."""

    def __init__(self, alpha=0.1, beta=0.2, target="wrong", approx_min_span_tree=True):
        self.alpha, self.beta, self.target = alpha, beta, target
        self.approx = approx_min_span_tree
        self.vectors = {}  # key -> list of float64 lists
        self.labels = {}  # key -> labels of the last clustering

    def fill(self, key, vectors):
        """Append vectors to a key and re-cluster it (to set up a memory of some depth)."""
        self.vectors.setdefault(key, []).extend(np.asarray(vectors, np.float64).tolist())
        self._cluster(key)

    def _cluster(self, key):
        x = np.array(self.vectors[key])
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        if len(xn) < 2:
            self.labels[key] = np.full(len(xn), -1)
        else:
            model = hdbscan.HDBSCAN(
                min_cluster_size=2, min_samples=1, metric="euclidean", approx_min_span_tree=self.approx
            )
            self.labels[key] = model.fit(xn).labels_

    def step(self, prompt_keys, features, correct):
        """One step: returns (cluster sizes, penalties) for the rollouts."""
        n = len(prompt_keys)
        sizes = np.zeros(n, dtype=np.int64)
        groups = {}
        for i in range(n):
            if not np.isnan(features[i]).all():
                groups.setdefault((prompt_keys[i], bool(correct[i])), []).append(i)
        for key, rows in groups.items():
            stored = self.vectors.setdefault(key, [])
            labels = self.labels.get(key)
            if labels is not None and len(labels) == len(stored) and stored:
                for i in rows:
                    nn = NearestNeighbors(n_neighbors=min(3, len(stored)), metric="cosine")
                    nn.fit(np.array(stored))
                    _, idx = nn.kneighbors(features[i][None].astype(np.float64))
                    votes = [int(labels[j]) for j in idx[0]]
                    best = max(votes.count(v) for v in votes)
                    winner = min(v for v in votes if votes.count(v) == best)
                    sizes[i] = sum(1 for lab in labels if lab == winner)
            stored.extend(features[i].astype(np.float64).tolist() for i in rows)
            self._cluster(key)
        for i in range(n):
            wrong = not correct[i]
            if self.target == "none" or (self.target == "wrong" and not wrong) or (self.target == "right" and wrong):
                sizes[i] = 0
        pens = np.array([min(self.alpha * np.log(s + 1.0), self.beta) for s in sizes])
        return sizes, pens
