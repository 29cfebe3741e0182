"""The per-prompt error memory of MEDS (spec §2-3).

Each key `(prompt_key, correct)` stores the feature vectors of its past rollouts (float32)
and the cluster labels of its last clustering. One training step, per key:
1. assign: each new vector votes among its k nearest stored vectors (cosine, raw vectors)
   for a label of the previous clustering; |C| is the number of stored vectors with it;
2. append the new vectors;
3. re-cluster the key's whole memory (HDBSCAN on L2-normalised rows); these labels are
   first used when the key next appears.

What we do beyond the reference, without changing its results:
- re-clustering is incremental (the key's exact minimum spanning tree is kept) and lazy
  for keys whose sizes are not used (e.g. correct rollouts under target=wrong);
- `assign` and `recluster` are separate calls, so a service can answer a prompt group at
  once and re-cluster in the background; a key with pending appends is re-clustered before
  its next assignment, so the results never depend on when `recluster` ran;
- bad features are rejected per rollout with a counted reason; checkpoints are atomic.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from .clustering import normalize_rows, recluster
from .config import MedsConfig
from .shaping import penalties as compute_penalties

FORMAT = "openrlhf_meds.error_memory"
VERSION = 1

# Why a rollout was not stored (counted in stats()["rejected"]).
REJECT_REASONS = ("no_feature", "nan", "inf", "zero_vector")


class _Key:
    """One key's memory: vectors, labels of the last clustering, and its MST."""

    __slots__ = ("vectors", "labels", "mst", "step", "at_step_start")

    def __init__(self, dim: int):
        self.vectors = np.empty((0, dim), np.float32)
        self.labels: np.ndarray | None = np.empty(0, np.int32)  # None: appended since
        self.mst: np.ndarray | None = np.empty(0, np.int32)  # MST of the first len(mst) rows
        # The step that last assigned to this key, and (vectors, labels) as they were when
        # it began: a second group of the same prompt in that step is assigned against them.
        self.step: int | None = None
        self.at_step_start: tuple[np.ndarray, np.ndarray] | None = None


def _package_labels(xn: np.ndarray, approx: bool) -> np.ndarray:
    """Labels from the hdbscan package, called as the official code calls it."""
    import hdbscan  # imported lazily: only clustering=hdbscan and tie fallbacks use it

    if len(xn) < 2:
        return np.full(len(xn), -1, np.int32)
    model = hdbscan.HDBSCAN(min_cluster_size=2, min_samples=1, metric="euclidean", approx_min_span_tree=approx)
    return model.fit(xn).labels_.astype(np.int32)


def _cosine_topk(stored: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest stored rows (cosine distance) for each new row."""
    s = stored.astype(np.float64)
    q = new.astype(np.float64)
    s /= np.sqrt(np.einsum("ij,ij->i", s, s))[:, None]
    q /= np.sqrt(np.einsum("ij,ij->i", q, q))[:, None]
    dist = np.clip(1.0 - q @ s.T, 0.0, 2.0)
    if k >= dist.shape[1]:
        return np.broadcast_to(np.arange(dist.shape[1]), dist.shape)
    return np.argpartition(dist, k - 1, axis=1)[:, :k]


def _vote(neighbour_labels: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Most frequent label per row, ties to the smallest label. Also returns, per row,
    whether the resulting |C| depends on how clusters are numbered: a tie between clusters
    (not noise, which is always the smallest) of different sizes."""
    winners = np.empty(len(neighbour_labels), np.int64)
    ambiguous = np.zeros(len(neighbour_labels), bool)
    for i, row in enumerate(neighbour_labels):
        values, n = np.unique(row, return_counts=True)  # sorted ascending
        best = values[n == n.max()]
        winners[i] = best[0]
        ambiguous[i] = best[0] != -1 and len(np.unique(counts[best + 1])) > 1
    return winners, ambiguous


class ErrorMemory:
    """Per-prompt memory of past rollouts' features, clustered, giving MEDS penalties.

    Typical use, once per training step::

        sizes, pens = memory.step(prompt_keys, features, correct)

    `features` is float [n, d] with an all-NaN row for a rollout without a feature;
    `correct` is the verifier's verdict (raw score >= 0.5).
    """

    def __init__(self, config: MedsConfig | None = None):
        self.config = (config or MedsConfig()).validate()
        self.keys: dict[tuple, _Key] = {}
        self.dim: int | None = None
        self.counters: Counter = Counter()
        self._rng = np.random.default_rng(self.config.seed)
        self._latest_step: int | None = None
        self._step_keys: list[tuple] = []  # keys holding an at_step_start view

    # ------------------------------------------------------------------ one step

    def step(self, prompt_keys: Sequence[Hashable], features, correct):
        """Assign, append and re-cluster (the reference step). Returns (cluster_sizes
        int64 [n], penalties float64 [n]); untargeted and featureless rollouts get 0."""
        sizes, pens, touched = self.assign(prompt_keys, features, correct)
        self.recluster(touched)
        return sizes, pens

    def assign(self, prompt_keys: Sequence[Hashable], features, correct, step: int | None = None):
        """Steps 1-2 of the reference step: cluster sizes and penalties from the previous
        clustering, then append. Returns (sizes, penalties, touched keys).

        Without `step`, one call is one training step. With `step`, a step may arrive as
        several calls (one per prompt group, in any order): a key assigned twice in the same
        step (a prompt drawn twice) is assigned against the memory as it was when the step
        began, so the results equal one `step()` call over the whole step. Steps must not
        go backwards for a key.
        """
        keys, feats, ok = self.check(prompt_keys, features, correct)
        if len(keys):
            self.dim = feats.shape[1]
        if step is not None:
            self._begin_step(int(step))
        n = len(keys)
        sizes = np.zeros(n, np.int64)
        valid = self._valid_rows(feats)
        self.counters["rollouts"] += n
        groups: dict[tuple, list[int]] = {}
        for i in np.nonzero(valid)[0]:
            groups.setdefault((keys[i], bool(ok[i])), []).append(int(i))
        joint = self.config.assignment == "joint" and self.config.clustering in ("exact", "hdbscan")
        for key, rows in groups.items():
            new = feats[rows]
            mem = self.keys.get(key)
            if mem is None:
                mem = self.keys[key] = _Key(feats.shape[1])
            if joint and self._targeted(key[1]):
                # Paper-prose variant: cluster memory + new rollouts together and use each
                # new rollout's own cluster (its size counts the new rollouts too).
                self._append(mem, new)
                self._cluster(mem)
                sizes[rows] = self._label_sizes(mem.labels[-len(rows) :], np.bincount(mem.labels + 1))
                continue
            if self._targeted(key[1]):
                sizes[rows] = self._sizes(*self._view(key, mem, step), new)
            self._append(mem, new)
        self.counters["stored"] += int(valid.sum())
        pens = compute_penalties(sizes, self.config.alpha, self.config.beta)
        self.counters["penalized"] += int((pens > 0).sum())
        return sizes, pens, [k for k in groups if self._targeted(k[1])]

    def recluster(self, keys=None) -> int:
        """Re-cluster the given keys (default: every key) that have appends pending.
        Returns how many were re-clustered."""
        done = 0
        for key in self.keys if keys is None else keys:
            mem = self.keys[key]
            if mem.labels is None:
                self._cluster(mem)
                done += 1
        return done

    # ------------------------------------------------------------------ internals

    def _begin_step(self, step: int):
        if self._latest_step is not None and step > self._latest_step:
            # A new step: views of older steps are no longer needed (free their arrays).
            for key in self._step_keys:
                mem = self.keys.get(key)
                if mem is not None and mem.step is not None and mem.step < step:
                    mem.at_step_start = None
            self._step_keys = [k for k in self._step_keys if k in self.keys and self.keys[k].at_step_start is not None]
        if self._latest_step is None or step > self._latest_step:
            self._latest_step = step

    def _view(self, key: tuple, mem: _Key, step: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(stored vectors, their labels) that a new rollout of `key` is assigned against."""
        if step is not None and mem.step is not None:
            if step < mem.step:
                raise ValueError(
                    f"step {step} for prompt key {key[0]!r} arrived after step {mem.step}: "
                    f"steps must not go backwards for a key"
                )
            if step == mem.step:
                if mem.at_step_start is not None:
                    return mem.at_step_start
                self.counters["late_duplicates"] += 1  # view already freed: best effort
        if mem.labels is None and self.config.clustering != "single":
            self._cluster(mem)
        if step is not None:
            mem.step = step
            mem.at_step_start = (mem.vectors, mem.labels)
            self._step_keys.append(key)
        return mem.vectors, mem.labels

    def check(self, prompt_keys, features, correct):
        """Validate one call's inputs (clear errors, nothing changed); returns (keys list,
        float32 features [n, d], bool correct [n])."""
        keys = list(prompt_keys)
        for k in keys:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"prompt keys must be str or int, got {type(k).__name__}: {k!r}")
        feats = np.asarray(features, dtype=np.float32)
        ok = np.asarray(correct)
        if feats.ndim != 2 or len(feats) != len(keys) or ok.shape != (len(keys),):
            raise ValueError(
                f"expected features [n, d] and correct [n] for n={len(keys)} prompt keys; got "
                f"features {feats.shape} and correct {ok.shape}"
            )
        if ok.dtype != bool:
            raise ValueError(f"correct must be a bool array (score >= 0.5), got {ok.dtype}")
        if len(keys) and self.dim is not None and feats.shape[1] != self.dim:
            raise ValueError(f"features have {feats.shape[1]} dims but the memory holds {self.dim}")
        return keys, feats, ok

    def _valid_rows(self, feats: np.ndarray) -> np.ndarray:
        nan = np.isnan(feats)
        reasons = [
            ("no_feature", nan.all(axis=1)),
            ("nan", nan.any(axis=1)),
            ("inf", np.isinf(feats).any(axis=1)),
            ("zero_vector", ~feats.any(axis=1)),
        ]
        valid = np.ones(len(feats), bool)
        for reason, rows in reasons:
            rows = rows & valid  # each rollout counted under its first reason
            self.counters[f"rejected_{reason}"] += int(rows.sum())
            valid &= ~rows
        return valid

    def _targeted(self, correct: bool) -> bool:
        target = self.config.target
        return target == "both" or (target == "wrong" and not correct) or (target == "right" and correct)

    def _sizes(self, vectors: np.ndarray, stored_labels: np.ndarray | None, new: np.ndarray) -> np.ndarray:
        cfg = self.config
        stored = len(vectors)
        if cfg.clustering == "single":  # count-based ablation: one cluster per key
            return np.full(len(new), stored, np.int64)
        if stored == 0:
            return np.zeros(len(new), np.int64)
        counts = np.bincount(stored_labels + 1)
        if cfg.clustering == "random":  # ablation: the cluster of a random stored vector
            return self._label_sizes(stored_labels[self._rng.integers(0, stored, len(new))], counts)
        k = min(cfg.knn_k, stored)
        neighbours = _cosine_topk(vectors, new, k)
        labels, ambiguous = _vote(stored_labels[neighbours], counts)
        if ambiguous.any() and cfg.clustering == "exact":
            # A tie between clusters goes to the smaller cluster number. Ours equal the
            # package's except among coincident rows (its KD-tree picks one of several
            # equidistant neighbours, which shifts its numbering) and above 60 dims (it
            # uses Prim's algorithm there): then ask the package for its numbers.
            self.counters["vote_ties"] += int(ambiguous.sum())
            xn = normalize_rows(vectors)
            if xn.shape[1] > 60 or len(np.unique(xn, axis=0)) < len(xn):
                ref = _package_labels(xn, approx=False)
                counts = np.bincount(ref + 1)
                labels, _ = _vote(ref[neighbours], counts)
                self.counters["tie_fallbacks"] += 1
        return self._label_sizes(labels, counts)

    def _label_sizes(self, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
        sizes = counts[labels + 1].astype(np.int64)
        if self.config.noise == "zero":
            sizes[labels == -1] = 0
        return sizes

    def _append(self, mem: _Key, new: np.ndarray):
        mem.vectors = np.concatenate([mem.vectors, new.astype(np.float32)])
        mem.labels = None
        bound = self.config.memory_bound
        if bound and len(mem.vectors) > bound:
            # Evict the oldest vectors; the spanning tree is rebuilt at the next clustering.
            self.counters["evicted"] += len(mem.vectors) - bound
            mem.vectors = mem.vectors[-bound:].copy()
            mem.mst = None

    def _cluster(self, mem: _Key):
        xn = normalize_rows(mem.vectors)
        if self.config.clustering == "hdbscan":
            mem.labels = _package_labels(xn, approx=True)
        else:
            mem.mst, labels = recluster(xn, mem.mst)
            mem.labels = labels.astype(np.int32)

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict:
        """Counters and memory shape, for logging (all plain numbers)."""
        clustered = [m for m in self.keys.values() if m.labels is not None and len(m.labels)]
        vectors = sum(len(m.vectors) for m in self.keys.values())
        nbytes = sum(
            m.vectors.nbytes
            + (m.labels.nbytes if m.labels is not None else 0)
            + (m.mst.nbytes if m.mst is not None else 0)
            for m in self.keys.values()
        )
        out = {
            "keys": len(self.keys),
            "vectors": vectors,
            "bytes_per_vector": nbytes / vectors if vectors else 0.0,
            "clustered_keys": len(clustered),
            "clustered_vectors": int(sum(len(m.labels) for m in clustered)),
            "clusters_per_key": float(np.mean([m.labels.max() + 1 for m in clustered])) if clustered else 0.0,
            "noise_frac": (
                float(sum((m.labels == -1).sum() for m in clustered) / sum(len(m.labels) for m in clustered))
                if clustered
                else 0.0
            ),
        }
        out.update({k: int(v) for k, v in self.counters.items()})
        return out

    # ------------------------------------------------------------------ checkpoints

    def absorb(self, other: ErrorMemory, keep=lambda prompt_key: True, counters: bool = True):
        """Move the keys of `other` whose prompt key passes `keep` into this memory, and add
        its counters if `counters` (used to re-shard a saved memory)."""
        if other.dim is not None and self.dim is not None and other.dim != self.dim:
            raise ValueError(f"cannot merge memories of {other.dim} and {self.dim} dims")
        for key, mem in other.keys.items():
            if keep(key[0]):
                if key in self.keys:
                    raise ValueError(f"key {key!r} is in both memories")
                self.keys[key] = mem
                self.dim = other.dim
        if counters:
            self.counters.update(other.counters)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: vectors, labels, trees, counters."""
        keys = list(self.keys)
        mems = [self.keys[k] for k in keys]

        def cat(arrays, dtype):
            return np.concatenate([np.asarray(a, dtype) for a in arrays]) if arrays else np.empty(0, dtype)

        return {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config.to_dict(),
            "dim": self.dim,
            "counters": dict(self.counters),
            "rng": self._rng.bit_generator.state,
            "keys": [[k[0], k[1]] for k in keys],
            "sizes": np.array([len(m.vectors) for m in mems], np.int64),
            "vectors": cat([m.vectors for m in mems], np.float32).reshape(-1, self.dim)
            if mems
            else np.empty((0, 0), np.float32),
            "has_labels": np.array([m.labels is not None for m in mems], bool),
            "labels": cat([m.labels for m in mems if m.labels is not None], np.int32),
            "mst_sizes": np.array([-1 if m.mst is None else len(m.mst) for m in mems], np.int64),
            "mst": cat([m.mst for m in mems if m.mst is not None], np.int32),
        }

    def load_state_dict(self, state: dict):
        """Restore from `state_dict()` output (replaces the current contents)."""
        if state.get("format") != FORMAT:
            raise ValueError(f"not an error-memory state (format={state.get('format')!r})")
        if state.get("version") != VERSION:
            raise ValueError(f"unsupported error-memory state version {state.get('version')!r} (expected {VERSION})")
        saved_clustering = state["config"].get("clustering")
        sizes, has_labels, mst_sizes = state["sizes"], state["has_labels"], state["mst_sizes"]
        vectors, labels, mst = state["vectors"], state["labels"], state["mst"]
        if len(sizes) != len(state["keys"]) or sizes.sum() != len(vectors):
            raise ValueError("error-memory state is inconsistent: key sizes do not match the vectors")
        keys: dict[tuple, _Key] = {}
        v0 = l0 = t0 = 0
        for i, (pk, ok) in enumerate(state["keys"]):
            mem = _Key(vectors.shape[1])
            m = int(sizes[i])
            mem.vectors = np.ascontiguousarray(vectors[v0 : v0 + m], np.float32)
            v0 += m
            if has_labels[i]:
                mem.labels = np.asarray(labels[l0 : l0 + m], np.int32)
                l0 += m
            else:
                mem.labels = None
            if mst_sizes[i] >= 0:
                mem.mst = np.asarray(mst[t0 : t0 + mst_sizes[i]], np.int32)
                t0 += int(mst_sizes[i])
            else:
                mem.mst = None
            if saved_clustering != self.config.clustering:
                mem.labels = None  # labels of another clustering method: redo them
            keys[(pk, bool(ok))] = mem
        if l0 != len(labels) or t0 != len(mst):
            raise ValueError("error-memory state is inconsistent: labels or trees do not match")
        self.keys = keys
        self.dim = state["dim"]
        self.counters = Counter(state["counters"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]

    def save(self, path: str):
        """Write the memory to `path` atomically (a temporary file, then rename)."""
        state = self.state_dict()
        arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
        header = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str, config: MedsConfig | None = None) -> ErrorMemory:
        """Read a memory saved by `save` (clear errors for a missing or corrupt file)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no MEDS memory checkpoint at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
            header = json.loads(state.pop("header").tobytes().decode())
        except (
            OSError,
            ValueError,
            KeyError,
            zipfile.BadZipFile,
            EOFError,
            UnicodeDecodeError,
            io.UnsupportedOperation,
        ) as e:
            raise ValueError(f"corrupt MEDS memory checkpoint {path}: {e}") from e
        state.update(header)
        memory = cls(config or MedsConfig(**header["config"]))
        try:
            memory.load_state_dict(state)
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"corrupt MEDS memory checkpoint {path}: {e}") from e
        return memory
