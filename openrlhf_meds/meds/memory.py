"""The per-prompt error memory of MEDS (spec §2-3).

Each key `(prompt_key, correct)` stores the feature vectors of its past rollouts (float32,
or their bfloat16 bits when they are bfloat16 numbers), the cluster labels of its last
clustering and, when the caller passes them, each rollout's final answer (an int32 id into
one table of answer strings per memory; the answers never change a penalty, they let
`stats()` and `openrlhf_meds.tools.inspect_memory` say what the clusters hold). One
training step, per key:
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
- bad features are rejected per rollout with a counted reason; checkpoints are atomic;
- vectors whose values are all bfloat16 numbers (the default `--meds.feature_dtype`) are
  stored as their 16 high bits, half the bytes, bit-exact (`pack_vectors`);
- `freeze()` captures the memory in O(keys) (arrays are replaced, never changed in place),
  so a service can save it in another thread while it goes on assigning;
- a memory file can be a *tail*: another memory file plus the prompt groups assigned after
  it (`save_tail`); `load` replays them, so a checkpoint costs a small file when an earlier
  full file exists.
The storage format and the files (packing, saving a frozen view, tails, loading) are
`memory_files.py`; the clustering is `clustering.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from .clustering import normalize_rows, package_labels, package_numbering, recluster
from .config import MedsConfig
from .diversity import adjusted_rand_index
from .memory_files import FORMAT, VERSION, FrozenMemory, load_memory, pack_vectors, unpack_vectors
from .shaping import penalties as compute_penalties

# Why a rollout was not stored (counted in stats()["rejected"]).
REJECT_REASONS = ("no_feature", "nan", "inf", "zero_vector")

# Stored answer ids: >= 0 index ErrorMemory.answer_table; these two mark the other cases.
UNKNOWN_ANSWER = -1  # the caller passed no answers (or the checkpoint predates them)
NO_ANSWER = -2  # the rollout had no final answer (None)
# Answers are kept to this many characters: enough to tell final answers apart, and it bounds
# the table (two answers that share these first characters are stored as one).
MAX_ANSWER_CHARS = 64


class _Key:
    """One key's memory: vectors, their answer ids, labels of the last clustering, its MST.

    Arrays are replaced, never changed in place: `ErrorMemory.freeze` relies on it."""

    __slots__ = ("data", "answers", "labels", "mst", "step", "at_step_start", "summary")

    def __init__(self, dim: int):
        self.data = np.empty((0, dim), np.uint16)  # the vectors as stored (`pack_vectors`)
        self.answers = np.empty(0, np.int32)  # one id per vector (UNKNOWN_ANSWER, NO_ANSWER or >= 0)
        # (labels, clusters, noise points, cluster-answer agreement), cached by stats() until
        # the labels change.
        self.summary: tuple[np.ndarray, int, int, float | None] | None = None
        self.labels: np.ndarray | None = np.empty(0, np.int32)  # None: appended since
        self.mst: np.ndarray | None = np.empty(0, np.int32)  # MST of the first len(mst) rows
        # The step that last assigned to this key, and (vectors, labels) as they were when
        # it began: a second group of the same prompt in that step is assigned against them.
        self.step: int | None = None
        self.at_step_start: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def vectors(self) -> np.ndarray:
        """The stored vectors, float32 [n, d]."""
        return unpack_vectors(self.data)


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
    nl = np.asarray(neighbour_labels, np.int64)
    votes = (nl[:, :, None] == nl[:, None, :]).sum(axis=2)  # per neighbour, its label's votes
    tied = votes == votes.max(axis=1, keepdims=True)
    winners = np.where(tied, nl, np.iinfo(np.int64).max).min(axis=1)
    ambiguous = (winners != -1) & (tied & (counts[nl + 1] != counts[winners + 1][:, None])).any(axis=1)
    return winners, ambiguous


class ErrorMemory:
    """Per-prompt memory of past rollouts' features, clustered, giving MEDS penalties.

    Typical use, once per training step::

        sizes, pens = memory.step(prompt_keys, features, correct)

    `features` is float [n, d] with an all-NaN row for a rollout without a feature;
    `correct` is the verifier's verdict (raw score >= 0.5). `answers` (optional, in `step`,
    `assign` and `check`): each rollout's final answer, str or None (no answer), stored with
    its vector (cut to `MAX_ANSWER_CHARS` characters); penalties do not depend on it.
    """

    def __init__(self, config: MedsConfig | None = None):
        self.config = (config or MedsConfig()).validate()
        self.keys: dict[tuple, _Key] = {}
        self.dim: int | None = None
        self.counters: Counter = Counter()
        self._rng = np.random.default_rng(self.config.seed)
        self._latest_step: int | None = None
        self._step_keys: list[tuple] = []  # keys holding an at_step_start view
        self.answer_table: list[str] = []  # answer id -> answer
        self._answer_ids: dict[str, int] = {}
        self._answer_bytes = 0  # UTF-8 bytes of the table

    # ------------------------------------------------------------------ one step

    def step(self, prompt_keys: Sequence[Hashable], features, correct, answers: Sequence[str | None] | None = None):
        """Assign, append and re-cluster (the reference step). Returns (cluster_sizes
        int64 [n], penalties float64 [n]); untargeted and featureless rollouts get 0.
        `answers`: optional final answers (str or None), stored with the vectors."""
        sizes, pens, touched = self.assign(prompt_keys, features, correct, answers=answers)
        self.recluster(touched)
        return sizes, pens

    def assign(
        self,
        prompt_keys: Sequence[Hashable],
        features,
        correct,
        step: int | None = None,
        answers: Sequence[str | None] | None = None,
    ):
        """Steps 1-2 of the reference step: cluster sizes and penalties from the previous
        clustering, then append. Returns (sizes, penalties, touched keys). `answers`: the
        rollouts' final answers (str or None), stored with their vectors (default: unknown).

        Without `step`, one call is one training step. With `step`, a step may arrive as
        several calls (one per prompt group, in any order): a key assigned twice in the same
        step (a prompt drawn twice) is assigned against the memory as it was when the step
        began, so the results equal one `step()` call over the whole step. Steps must not
        go backwards for a key.
        """
        keys, feats, ok, answers = self.check(prompt_keys, features, correct, answers)
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
            ids = self._answer_codes(None if answers is None else [answers[i] for i in rows], len(rows))
            mem = self.keys.get(key)
            if mem is None:
                mem = self.keys[key] = _Key(feats.shape[1])
            if joint and self._targeted(key[1]):
                # Paper-prose variant: cluster memory + new rollouts together and use each
                # new rollout's own cluster (its size counts the new rollouts too).
                self._append(mem, new, ids)
                self._cluster(mem)
                sizes[rows] = self._label_sizes(mem.labels[-len(rows) :], np.bincount(mem.labels + 1))
                continue
            if self._targeted(key[1]):
                sizes[rows] = self._sizes(*self._view(key, mem, step), new, mem)
            self._append(mem, new, ids)
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

    def pending(self) -> list[tuple]:
        """The keys whose penalties will need a re-clustering (targeted, appended since their
        last one): `recluster(memory.pending())` labels everything the next assignments use,
        and nothing else (untargeted keys are never clustered)."""
        if self.config.clustering == "single":  # the count-based ablation uses no labels
            return []
        return [k for k, m in self.keys.items() if m.labels is None and self._targeted(k[1])]

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
        """(stored vectors as packed, their labels) that a new rollout of `key` is assigned against."""
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
            mem.at_step_start = (mem.data, mem.labels)
            self._step_keys.append(key)
        return mem.data, mem.labels

    def check(self, prompt_keys, features, correct, answers: Sequence[str | None] | None = None):
        """Validate one call's inputs (clear errors, nothing changed); returns (keys list,
        float32 features [n, d], bool correct [n], answers): answers is None when not given,
        else a list of n str (cut to `MAX_ANSWER_CHARS` characters) or None."""
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
        if answers is not None:
            if isinstance(answers, (str, bytes)):
                raise TypeError("answers must be a sequence of str or None, one per rollout, not a single string")
            answers = list(answers)
            if len(answers) != len(keys):
                raise ValueError(f"expected {len(keys)} answers (one per rollout), got {len(answers)}")
            for a in answers:
                if a is not None and not isinstance(a, str):
                    raise TypeError(f"answers must be str or None (no answer), got {type(a).__name__}: {a!r}")
            answers = [None if a is None else str(a[:MAX_ANSWER_CHARS]) for a in answers]
        return keys, feats, ok, answers

    def _answer_codes(self, answers: list | None, n: int) -> np.ndarray:
        """int32 ids of `n` checked answers (None: all unknown), adding new ones to the table."""
        if answers is None:
            return np.full(n, UNKNOWN_ANSWER, np.int32)
        return np.array([NO_ANSWER if a is None else self._intern(a) for a in answers], np.int32)

    def _intern(self, answer: str) -> int:
        i = self._answer_ids.get(answer)
        if i is None:
            i = self._answer_ids[answer] = len(self.answer_table)
            self.answer_table.append(answer)
            self._answer_bytes += len(answer.encode())
        return i

    def answer_of(self, answer_id: int) -> str | None:
        """The answer an id stored in a key's `answers` stands for: the string, None for
        no answer; KeyError for UNKNOWN_ANSWER or an id not in the table."""
        if answer_id == NO_ANSWER:
            return None
        if not 0 <= answer_id < len(self.answer_table):
            raise KeyError(f"answer id {answer_id} is unknown (the memory holds {len(self.answer_table)} answers)")
        return self.answer_table[answer_id]

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

    def _sizes(
        self, data: np.ndarray, stored_labels: np.ndarray | None, new: np.ndarray, mem: _Key | None = None
    ) -> np.ndarray:
        cfg = self.config
        stored = len(data)
        if cfg.clustering == "single":  # count-based ablation: one cluster per key
            return np.full(len(new), stored, np.int64)
        if stored == 0:
            return np.zeros(len(new), np.int64)
        counts = np.bincount(stored_labels + 1)
        if cfg.clustering == "random":  # ablation: the cluster of a random stored vector
            return self._label_sizes(stored_labels[self._rng.integers(0, stored, len(new))], counts)
        k = min(cfg.knn_k, stored)
        vectors = unpack_vectors(data)
        neighbours = _cosine_topk(vectors, new, k)
        labels, ambiguous = _vote(stored_labels[neighbours], counts)
        if ambiguous.any() and cfg.clustering == "exact":
            # A tie between clusters goes to the smaller cluster number. Ours equal the
            # package's except on keys with bitwise-identical rows (its KD-tree picks which
            # copy a point joins) or > 60 dims; package_numbering gives the package's numbers
            # where a tie depends on them (tie_replays / tie_fallbacks in the stats).
            self.counters["vote_ties"] += int(ambiguous.sum())
            mst = mem.mst if mem is not None and data is mem.data else None
            votes = stored_labels[neighbours[ambiguous]]
            ref = package_numbering(normalize_rows(vectors), stored_labels, votes, mst, self.counters)
            if ref is not None:
                counts = np.bincount(ref + 1)
                labels, _ = _vote(ref[neighbours], counts)
        return self._label_sizes(labels, counts)

    def _label_sizes(self, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
        sizes = counts[labels + 1].astype(np.int64)
        if self.config.noise == "zero":
            sizes[labels == -1] = 0
        return sizes

    def _append(self, mem: _Key, new: np.ndarray, answer_ids: np.ndarray):
        new = pack_vectors(new)
        if new.dtype == mem.data.dtype:
            mem.data = np.concatenate([mem.data, new])
        else:  # a value that is no bfloat16: the key is stored as float32 from now on
            mem.data = np.concatenate([unpack_vectors(mem.data), unpack_vectors(new)])
        mem.answers = np.concatenate([mem.answers, answer_ids.astype(np.int32)])
        mem.labels = None
        bound = self.config.memory_bound
        if bound and len(mem.data) > bound:
            # Evict the oldest vectors; the spanning tree is rebuilt at the next clustering.
            # (Their answers stay in the table: other vectors may share them.)
            self.counters["evicted"] += len(mem.data) - bound
            mem.data = mem.data[-bound:].copy()
            mem.answers = mem.answers[-bound:].copy()
            mem.mst = None

    def _cluster(self, mem: _Key):
        xn = normalize_rows(mem.vectors)
        if self.config.clustering == "hdbscan":
            mem.labels = package_labels(xn, approx=True).astype(np.int32)  # as the official code calls it
        else:
            mem.mst, labels = recluster(xn, mem.mst, self.counters)
            mem.labels = labels.astype(np.int32)

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict:
        """Counters and memory shape, for logging (all plain numbers).

        `cluster_answer_agreement`: the mean over clustered keys of their agreement
        (`_summary`: the adjusted Rand index between a key's cluster labels and its stored
        answers), over the `cluster_answer_agreement_keys` keys where it is defined; 0.0 when
        none is.
        `bytes_per_vector` counts the arrays and the answer table (its strings' UTF-8 bytes
        plus an 8-byte offset each, as saved)."""
        clustered = [m for m in self.keys.values() if m.labels is not None and len(m.labels)]
        vectors = sum(len(m.data) for m in self.keys.values())
        nbytes = sum(
            m.data.nbytes
            + m.answers.nbytes
            + (m.labels.nbytes if m.labels is not None else 0)
            + (m.mst.nbytes if m.mst is not None else 0)
            for m in self.keys.values()
        )
        nbytes += self._answer_bytes + 8 * len(self.answer_table)
        summaries = [self._summary(m) for m in clustered]
        clustered_vectors = int(sum(len(m.labels) for m in clustered))
        agreement = [a for _, _, a in summaries if a is not None]
        out = {
            "keys": len(self.keys),
            "vectors": vectors,
            "bytes_per_vector": nbytes / vectors if vectors else 0.0,
            "clustered_keys": len(clustered),
            "clustered_vectors": clustered_vectors,
            "clusters_per_key": float(np.mean([c for c, _, _ in summaries])) if clustered else 0.0,
            "noise_frac": float(sum(n for _, n, _ in summaries) / clustered_vectors) if clustered else 0.0,
            "cluster_answer_agreement": float(np.mean(agreement)) if agreement else 0.0,
            "cluster_answer_agreement_keys": len(agreement),
        }
        out.update({k: int(v) for k, v in self.counters.items()})
        return out

    def _summary(self, mem: _Key) -> tuple[int, int, float | None]:
        """(clusters, noise points, agreement) of a clustered key; agreement: the adjusted
        Rand index between its cluster labels and its stored answers, over its clustered
        vectors (noise left out: a noise point belongs to no cluster) whose answer is known
        ("no answer" is one answer), None for fewer than 2 such vectors. Cached with the
        labels it was computed from, so stats() only pays for keys re-clustered since the
        last call."""
        labels = mem.labels
        if mem.summary is not None and mem.summary[0] is labels:
            return mem.summary[1:]
        keep = (labels != -1) & (mem.answers != UNKNOWN_ANSWER)
        value = adjusted_rand_index(labels[keep], mem.answers[keep]) if keep.sum() >= 2 else None
        mem.summary = (labels, int(labels.max()) + 1, int((labels == -1).sum()), value)
        return mem.summary[1:]

    # ------------------------------------------------------------------ checkpoints

    def absorb(self, other: ErrorMemory, keep=lambda prompt_key: True, counters: bool = True):
        """Move the keys of `other` whose prompt key passes `keep` into this memory, and add
        its counters if `counters` (used to re-shard a saved memory). The moved keys' answers
        are re-numbered into this memory's answer table; `other` is not to be used after."""
        if other.dim is not None and self.dim is not None and other.dim != self.dim:
            raise ValueError(f"cannot merge memories of {other.dim} and {self.dim} dims")
        remap = np.full(len(other.answer_table), UNKNOWN_ANSWER, np.int64)  # other's id -> ours
        for key, mem in other.keys.items():
            if keep(key[0]):
                if key in self.keys:
                    raise ValueError(f"key {key!r} is in both memories")
                known = mem.answers >= 0
                if known.any():
                    used = np.unique(mem.answers[known])
                    todo = used[remap[used] == UNKNOWN_ANSWER]  # only the answers kept keys use
                    remap[todo] = [self._intern(other.answer_table[i]) for i in todo]
                    answers = mem.answers.copy()
                    answers[known] = remap[mem.answers[known]]
                    mem.answers = answers
                self.keys[key] = mem
                self.dim = other.dim
        if counters:
            self.counters.update(other.counters)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: vectors, labels, trees, counters; and the
        stored answers (ids per vector, the table as one UTF-8 blob with offsets)."""
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
            "sizes": np.array([len(m.data) for m in mems], np.int64),
            "vectors": cat([m.vectors for m in mems], np.float32).reshape(-1, self.dim)
            if mems
            else np.empty((0, 0), np.float32),
            "has_labels": np.array([m.labels is not None for m in mems], bool),
            "labels": cat([m.labels for m in mems if m.labels is not None], np.int32),
            "mst_sizes": np.array([-1 if m.mst is None else len(m.mst) for m in mems], np.int64),
            "mst": cat([m.mst for m in mems if m.mst is not None], np.int32),
            "answers": cat([m.answers for m in mems], np.int32),
            "answer_table": np.frombuffer("".join(self.answer_table).encode(), np.uint8),
            "answer_offsets": np.cumsum([0] + [len(a.encode()) for a in self.answer_table], dtype=np.int64),
        }

    def load_state_dict(self, state: dict):
        """Restore from `state_dict()` output (replaces the current contents). A state
        without answers (saved before they were stored) loads with every answer unknown.
        The vectors are float32 ("vectors") or, as `save` writes them when every stored
        value is a bfloat16, their high 16 bits ("vectors_bf16", uint16). Every key gets
        arrays of its own (no views into the state's), so the state can be freed."""
        if state.get("format") != FORMAT:
            raise ValueError(f"not an error-memory state (format={state.get('format')!r})")
        if state.get("version") not in (1, VERSION):
            raise ValueError(f"unsupported error-memory state version {state.get('version')!r} (expected {VERSION})")
        saved_clustering = state["config"].get("clustering")
        sizes, has_labels, mst_sizes = state["sizes"], state["has_labels"], state["mst_sizes"]
        packed = "vectors_bf16" in state
        vectors = np.asarray(state["vectors_bf16"], np.uint16) if packed else state["vectors"]
        labels, mst = state["labels"], state["mst"]
        if len(sizes) != len(state["keys"]) or sizes.sum() != len(vectors):
            raise ValueError("error-memory state is inconsistent: key sizes do not match the vectors")
        table, answers = self._answer_state(state, len(vectors))
        keys: dict[tuple, _Key] = {}
        v0 = l0 = t0 = 0
        for i, (pk, ok) in enumerate(state["keys"]):
            mem = _Key(vectors.shape[1])
            m = int(sizes[i])
            rows = vectors[v0 : v0 + m]
            mem.data = np.array(rows) if packed else pack_vectors(np.array(rows, np.float32))
            mem.answers = np.array(answers[v0 : v0 + m], np.int32)
            v0 += m
            if has_labels[i]:
                mem.labels = np.array(labels[l0 : l0 + m], np.int32)
                l0 += m
            else:
                mem.labels = None
            if mst_sizes[i] >= 0:
                mem.mst = np.array(mst[t0 : t0 + mst_sizes[i]], np.int32)
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
        self.answer_table = table
        self._answer_ids = {a: i for i, a in enumerate(table)}
        self._answer_bytes = sum(len(a.encode()) for a in table)

    @staticmethod
    def _answer_state(state: dict, n: int) -> tuple[list[str], np.ndarray]:
        """(answer table, int32 ids [n]) of a state; all unknown for a state without them."""
        if "answers" not in state:
            return [], np.full(n, UNKNOWN_ANSWER, np.int32)
        blob = np.asarray(state["answer_table"], np.uint8).tobytes()
        offsets = np.asarray(state["answer_offsets"], np.int64)
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(blob) or (np.diff(offsets) < 0).any():
            raise ValueError("error-memory state is inconsistent: the answer table's offsets do not match it")
        try:
            table = [blob[int(a) : int(b)].decode() for a, b in zip(offsets[:-1], offsets[1:])]
        except UnicodeDecodeError as e:
            raise ValueError(f"error-memory state is inconsistent: an answer is not UTF-8 ({e})") from None
        answers = np.asarray(state["answers"], np.int32)
        if len(answers) != n or (len(answers) and (answers.min() < NO_ANSWER or answers.max() >= len(table))):
            raise ValueError("error-memory state is inconsistent: the answer ids do not match the vectors or table")
        return table, answers

    def freeze(self) -> FrozenMemory:
        """The memory as it is now, to save (`FrozenMemory.save`) while it goes on changing
        (in another thread, say): O(keys), no array is copied."""
        return FrozenMemory(self)

    def save(self, path: str):
        """Write the memory to `path` atomically (a temporary file, fsync, then rename)."""
        self.freeze().save(path)

    @classmethod
    def load(cls, path: str, config: MedsConfig | None = None) -> ErrorMemory:
        """Read a memory file written by `save` or `save_tail` (a tail: its base file, then
        its groups assigned and the touched keys re-clustered); clear errors for a missing
        or corrupt file. `config`: None takes the file's."""
        return load_memory(cls, path, config)
