"""Diversity of one prompt group's rollouts: what MEDS is meant to keep up (docs/diversity.md).

Representation level, on the group's feature vectors (the per-layer answer-token logits):
- `top1_eigen_ratio`: the share of the feature variance along its first principal axis
  (1.0 = collapsed onto a line or a point; the paper's "top-1 eigen ratio");
- `effective_rank`: exp of the entropy of the normalised covariance eigenvalues.

Answer level, on the final answers (the `\\boxed{}` contents) and the verifier's verdicts:
- `distinct_answer_frac`, `answer_entropy`, `repeated_error_rate`, `group_pass_at_k`.

`group_diversity` gives all of them for one group as a dict with stable names, and
`mean_over_groups` averages such dicts over a step's groups, ignoring NaN (a metric that
is undefined for a group, e.g. the repeated-error rate of a group without errors).
`adjusted_rand_index` compares two labelings (used by `ErrorMemory.stats`). numpy only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..eval.passk import pass_at_k, powers_of_two_up_to

# Names of the entries of group_diversity(), in order (then pass@k for each k).
METRICS = ("eigen_top1_ratio", "effective_rank", "distinct_answers", "answer_entropy", "repeated_error_rate")


def _finite_rows(features) -> np.ndarray:
    """float64 [m, d]: the rows of `features` [n, d] with no NaN or inf value."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array [n, d], got shape {x.shape}")
    return x[np.isfinite(x).all(axis=1)]


def _eigenvalues(features) -> np.ndarray | None:
    """Eigenvalues (descending, >= 0) of the covariance of the finite rows; None when no row
    is finite. A single row or identical rows give all zeros."""
    x = _finite_rows(features)
    if len(x) == 0:
        return None
    if len(x) < 2:
        return np.zeros(1)
    # Centre on the first row before taking the mean: identical rows then centre to exact
    # zeros (a float mean of equal values need not equal them), and cancellation is smaller.
    x = x - x[0]
    x -= x.mean(axis=0)
    # The covariance's eigenvalues are the squared singular values of the centred rows / (n - 1).
    s = np.linalg.svd(x, compute_uv=False)
    return s**2 / (len(x) - 1)


def top1_eigen_ratio(features) -> float:
    """Largest eigenvalue / sum of eigenvalues of the covariance of the rows of `features`.

    `features`: [n, d], one group's feature vectors. Rows holding a NaN or inf (this
    project's all-NaN row of a rollout without a feature) are left out. Returns 1.0 (fully
    collapsed) when fewer than 2 rows remain or all remaining rows are equal, NaN when no row
    remains; otherwise a value in [1/min(n-1, d), 1]. ValueError unless `features` is 2-D.
    """
    ev = _eigenvalues(features)
    if ev is None:
        return math.nan
    total = ev.sum()
    return float(ev[0] / total) if total > 0 else 1.0


def effective_rank(features) -> float:
    """exp(H(p)) with p = eigenvalues / their sum (natural log, 0 ln 0 = 0): the number of
    equally strong directions the rows spread over.

    Same input and row exclusion as `top1_eigen_ratio`: 1.0 for fewer than 2 finite rows or
    identical rows, NaN when no row is finite, at most min(n - 1, d) otherwise.
    """
    ev = _eigenvalues(features)
    if ev is None:
        return math.nan
    total = ev.sum()
    if total <= 0:
        return 1.0
    p = ev[ev > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _answer_list(answers: Iterable) -> list:
    out = list(answers)
    if not out:
        raise ValueError("need at least one rollout's answer, got none")
    for a in out:
        if a is not None and not isinstance(a, str):
            raise TypeError(f"answers must be str or None (no answer), got {type(a).__name__}: {a!r}")
    return out


def distinct_answer_frac(answers: Sequence[str | None]) -> float:
    """Number of distinct final answers / number of rollouts, in (0, 1].

    Answers compare as exact strings (normalise them first if needed); every None (a
    rollout without a final answer) falls in one shared category, "no answer". ValueError
    for an empty group, TypeError for an answer that is neither str nor None.
    """
    a = _answer_list(answers)
    return len(set(a)) / len(a)


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Entropy (natural log) of the group's final-answer distribution: -sum_a p_a ln p_a with
    p_a the share of rollouts giving answer a (None: one "no answer" category). 0 when all
    agree, ln(n) when all differ. Errors as in `distinct_answer_frac`."""
    a = _answer_list(answers)
    p = np.array(list(Counter(a).values()), np.float64) / len(a)
    return float(-(p * np.log(p)).sum())


def _bool_array(correct, n: int | None) -> np.ndarray:
    """`correct` as a bool [n] array (n=None: any length); ValueError otherwise."""
    ok = np.asarray(correct)
    if n is None and ok.ndim != 1:
        raise ValueError(f"correct must be a 1-D array of verdicts, got shape {ok.shape}")
    if n is not None and ok.shape != (n,):
        raise ValueError(f"correct must have one verdict per rollout: expected shape ({n},), got {ok.shape}")
    if ok.dtype != bool:
        raise ValueError(f"correct must be a bool array (score >= 0.5), got {ok.dtype}")
    return ok


def repeated_error_rate(answers: Sequence[str | None], correct) -> float:
    """Share of the group's wrong rollouts that give its most common wrong answer.

    `correct`: bool [n], the verifier's verdicts. A wrong rollout without an answer (None)
    counts under the one "no answer" category, so a policy that keeps failing to answer
    repeats an error too. In [1/w, 1] for w wrong rollouts; NaN when the group has no wrong
    rollout (undefined, so that `mean_over_groups` averages over the groups that have
    errors). ValueError for mismatched lengths or non-bool verdicts.
    """
    a = _answer_list(answers)
    ok = _bool_array(correct, len(a))
    wrong = [x for x, good in zip(a, ok) if not good]
    if not wrong:
        return math.nan
    return Counter(wrong).most_common(1)[0][1] / len(wrong)


def group_pass_at_k(correct, k: int) -> float:
    """Unbiased pass@k of one group (`openrlhf_meds.eval.passk.pass_at_k` with n = the group
    size, c = its correct rollouts). ValueError unless 1 <= k <= n or for non-bool verdicts."""
    ok = _bool_array(correct, None)
    return pass_at_k(len(ok), int(ok.sum()), k)


def group_diversity(features, answers: Sequence[str | None], correct, ks: Sequence[int] | None = None) -> dict:
    """All diversity metrics of one prompt group, as {name: float}.

    `features`: float [n, d] (rows with NaN/inf left out), or None when there are no
    features (the two feature metrics are then NaN); `answers`: n final answers (str, or
    None for no answer); `correct`: bool [n]; `ks`: the k of the pass@k entries (default:
    1, 2, 4, ... up to n). Keys, in order: eigen_top1_ratio, effective_rank,
    distinct_answers, answer_entropy, repeated_error_rate, then pass@k per k. A k above n
    gives NaN, so groups of different sizes still share the keys.
    """
    a = _answer_list(answers)
    n = len(a)
    ok = _bool_array(correct, n)
    if features is not None and len(np.asarray(features)) != n:
        raise ValueError(f"features must have one row per rollout: {len(np.asarray(features))} rows for {n} answers")
    out = {
        "eigen_top1_ratio": math.nan if features is None else top1_eigen_ratio(features),
        "effective_rank": math.nan if features is None else effective_rank(features),
        "distinct_answers": distinct_answer_frac(a),
        "answer_entropy": answer_entropy(a),
        "repeated_error_rate": repeated_error_rate(a, ok),
    }
    for k in powers_of_two_up_to(n) if ks is None else ks:
        out[f"pass@{k}"] = group_pass_at_k(ok, k) if k <= n else math.nan
    return out


def mean_over_groups(groups: Sequence[Mapping[str, float]]) -> dict:
    """{name: mean over the groups of that value}, NaN values (and absent names) left out;
    NaN for a name no group defines. Names keep their first-seen order; [] gives {}.

    With `group_diversity` dicts, a trainer logs `train/div/<name>` for each entry.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for g in groups:
        for name, value in g.items():
            value = float(value)
            sums.setdefault(name, 0.0)
            counts.setdefault(name, 0)
            if not math.isnan(value):
                sums[name] += value
                counts[name] += 1
    return {name: sums[name] / counts[name] if counts[name] else math.nan for name in sums}


def adjusted_rand_index(labels_a, labels_b) -> float:
    """Adjusted Rand index of two labelings of the same items (1.0: the same partition,
    about 0: chance agreement, negative: worse than chance).

    Equal to `sklearn.metrics.adjusted_rand_score` (same pair-counting formula and the same
    1.0 for identical partitions, including a single item), written here in numpy because
    scikit-learn's input checks cost about a millisecond per call and `ErrorMemory.stats`
    calls it for every re-clustered key. Labels may be any hashable values numpy can sort.
    """
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D labelings of the same length, got shapes {a.shape} and {b.shape}")
    n = len(a)
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    # Contingency counts of the (a, b) label pairs, then the pair confusion matrix.
    _, nij = np.unique(ia.astype(np.int64) * (int(ib.max(initial=0)) + 1) + ib, return_counts=True)
    na, nb = np.bincount(ia), np.bincount(ib)
    # Python ints: no overflow for any n.
    squares = int((nij.astype(np.int64) ** 2).sum())
    tp = squares - n
    fp = int((nb.astype(np.int64) ** 2).sum()) - squares
    fn = int((na.astype(np.int64) ** 2).sum()) - squares
    tn = n * n - fp - fn - squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
