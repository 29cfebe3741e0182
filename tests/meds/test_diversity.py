"""Diversity metrics against direct computations: covariance eigenvalues by np.linalg.eigvalsh
of np.cov, answer counts by hand, pass@k by enumerating every k-subset, the adjusted Rand
index against scikit-learn."""

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from openrlhf_meds.meds.diversity import (
    METRICS,
    adjusted_rand_index,
    answer_entropy,
    distinct_answer_frac,
    effective_rank,
    group_diversity,
    group_pass_at_k,
    mean_over_groups,
    repeated_error_rate,
    top1_eigen_ratio,
)


def direct_eigenvalues(x):
    return np.clip(np.linalg.eigvalsh(np.cov(np.asarray(x, np.float64), rowvar=False)), 0, None)


@pytest.mark.parametrize("n, d, seed", [(16, 14, 0), (5, 14, 1), (40, 3, 2), (2, 6, 3)])
def test_eigen_metrics_equal_the_covariance_eigenvalues(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, size=d) + rng.normal(size=d) * 10
    ev = direct_eigenvalues(x)
    assert top1_eigen_ratio(x) == pytest.approx(ev.max() / ev.sum(), rel=1e-9)
    p = ev[ev > 1e-12 * ev.sum()] / ev.sum()
    assert effective_rank(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert 1.0 <= effective_rank(x) <= min(n - 1, d) + 1e-9


def test_spread_along_one_axis_vs_isotropic():
    rng = np.random.default_rng(4)
    line = np.outer(rng.normal(size=50), rng.normal(size=8)) + 3.0
    assert top1_eigen_ratio(line) == pytest.approx(1.0)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    # four orthogonal directions of equal variance: ratio 1/4, effective rank 4
    square = np.vstack([np.eye(4), -np.eye(4)])
    assert top1_eigen_ratio(square) == pytest.approx(0.25)
    assert effective_rank(square) == pytest.approx(4.0)


def test_collapsed_and_single_row_groups():
    row = np.array([0.1, 0.7, -3.3, 1e-3], np.float32)  # not exactly representable: means round
    same = np.tile(row, (7, 1))
    assert top1_eigen_ratio(same) == 1.0 and effective_rank(same) == 1.0
    assert top1_eigen_ratio(row[None]) == 1.0 and effective_rank(row[None]) == 1.0
    assert math.isnan(top1_eigen_ratio(np.empty((0, 4)))) and math.isnan(effective_rank(np.empty((0, 4))))


def test_rows_with_nan_or_inf_are_left_out():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 6))
    with_bad = np.vstack([x[:4], np.full((1, 6), np.nan), x[4:], [[np.inf] + [0.0] * 5]])
    with_bad[2:3] = np.nan  # an all-NaN row (no feature), replacing x[2]
    kept = np.delete(x, 2, axis=0)
    ev = direct_eigenvalues(kept)
    assert top1_eigen_ratio(with_bad) == pytest.approx(ev.max() / ev.sum(), rel=1e-9)
    assert effective_rank(with_bad) == pytest.approx(effective_rank(kept), rel=1e-12)
    one_left = np.vstack([x[:1], np.full((3, 6), np.nan)])
    assert top1_eigen_ratio(one_left) == 1.0
    assert math.isnan(top1_eigen_ratio(np.full((3, 6), np.nan)))
    with pytest.raises(ValueError, match=r"2-D array \[n, d\]"):
        top1_eigen_ratio(np.ones(5))


def test_answer_metrics_by_hand():
    answers = ["3", "3", "5", None, "3", None, "7", "5"]
    # distinct: "3", "5", "7" and one shared "no answer" category
    assert distinct_answer_frac(answers) == 4 / 8
    counts = np.array([3, 2, 2, 1]) / 8
    assert answer_entropy(answers) == pytest.approx(-(counts * np.log(counts)).sum(), rel=1e-12)
    assert answer_entropy(["a"] * 5) == 0.0
    assert answer_entropy(list("abcd")) == pytest.approx(math.log(4))
    assert distinct_answer_frac(list("abcd")) == 1.0
    correct = np.array([False, False, True, False, False, False, True, False])
    # wrong: "3", "3", None, "3", None, "5": the most common wrong answer "3" holds 3 of 6
    assert repeated_error_rate(answers, correct) == 3 / 6
    wrong_none = np.array([True, True, True, False, True, False, True, True])
    assert repeated_error_rate(answers, wrong_none) == 1.0  # both wrong ones gave no answer
    assert math.isnan(repeated_error_rate(answers, np.ones(8, bool)))


def test_answer_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        distinct_answer_frac([])
    with pytest.raises(TypeError, match="str or None"):
        answer_entropy(["1", 2])
    with pytest.raises(ValueError, match="one verdict per rollout"):
        repeated_error_rate(["1", "2"], np.array([True]))
    with pytest.raises(ValueError, match="bool array"):
        repeated_error_rate(["1", "2"], np.array([1, 0]))


def brute_force_pass_at_k(correct, k):
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("c", [0, 1, 3, 7, 8])
def test_group_pass_at_k_equals_enumerating_the_subsets(c):
    correct = np.zeros(8, bool)
    correct[np.random.default_rng(c).permutation(8)[:c]] = True
    for k in range(1, 9):
        assert group_pass_at_k(correct, k) == pytest.approx(brute_force_pass_at_k(correct, k), rel=1e-12)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        group_pass_at_k(correct, 9)
    with pytest.raises(ValueError, match="bool array"):
        group_pass_at_k(correct.astype(int), 1)


def test_group_diversity_is_each_metric_with_stable_names():
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(6, 5))
    feats[1] = np.nan
    answers = ["1", "2", "2", None, "2", "1"]
    correct = np.array([True, False, False, False, False, True])
    out = group_diversity(feats, answers, correct)
    assert list(out) == list(METRICS) + ["pass@1", "pass@2", "pass@4"]
    assert out == {
        "eigen_top1_ratio": top1_eigen_ratio(feats),
        "effective_rank": effective_rank(feats),
        "distinct_answers": 3 / 6,
        "answer_entropy": answer_entropy(answers),
        "repeated_error_rate": 3 / 4,
        "pass@1": 2 / 6,
        "pass@2": brute_force_pass_at_k(correct, 2),
        "pass@4": brute_force_pass_at_k(correct, 4),
    }
    fixed = group_diversity(None, answers, correct, ks=(1, 8))
    assert math.isnan(fixed["eigen_top1_ratio"]) and math.isnan(fixed["effective_rank"])
    assert fixed["pass@1"] == pytest.approx(2 / 6) and math.isnan(fixed["pass@8"])  # k > n
    with pytest.raises(ValueError, match="one row per rollout"):
        group_diversity(feats[:3], answers, correct)


def test_mean_over_groups_ignores_nan():
    groups = [
        {"a": 1.0, "b": math.nan, "c": math.nan},
        {"a": 3.0, "b": 0.5, "c": math.nan},
        {"a": 8.0, "b": 0.25},
    ]
    out = mean_over_groups(groups)
    assert list(out) == ["a", "b", "c"]
    assert out["a"] == 4.0 and out["b"] == 0.375 and math.isnan(out["c"])
    assert mean_over_groups([]) == {}
    rng = np.random.default_rng(7)
    real = [
        group_diversity(rng.normal(size=(4, 3)), list("abca"), np.array([i < g for i in range(4)])) for g in range(5)
    ]
    means = mean_over_groups(real)
    # the all-correct group (g=4) has no errors: its NaN is left out of the mean
    assert means["repeated_error_rate"] == pytest.approx(np.mean([g["repeated_error_rate"] for g in real[:4]]))
    assert means["pass@1"] == pytest.approx(np.mean([g / 4 for g in range(5)]))


def test_adjusted_rand_index_equals_scikit_learn():
    rng = np.random.default_rng(8)
    cases = [([0, 0, 1, 1], [5, 5, 2, 2]), ([0, 0, 1, 1], [0, 1, 0, 1]), ([3], [1]), ([0, 0], [1, 2])]
    cases += [([0, 0, 0], [0, 0, 0]), ([0, 1, 2], [4, 4, 4])]
    cases += [(rng.integers(0, a, n), rng.integers(0, b, n)) for n, a, b in [(64, 5, 8), (300, 2, 2), (17, 17, 3)]]
    for a, b in cases:
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12), (a, b)
    assert adjusted_rand_index(np.array([0, 0, 1]), np.array(["x", "x", "y"])) == 1.0
    with pytest.raises(ValueError, match="same length"):
        adjusted_rand_index([0, 1], [0])
