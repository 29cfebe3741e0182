"""The unbiased pass@k estimator against exact fractions: brute force over k-subsets for small n,
Fraction arithmetic for n = 4096 (where floats would overflow or cancel)."""

import itertools
from fractions import Fraction
from math import comb, prod

import numpy as np
import pytest

from openrlhf_meds.eval import mean_at_n, mean_pass_at_k, pass_at_k, pass_at_k_exact


def brute_force(n: int, c: int, k: int) -> Fraction:
    """The share of k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_small_n_against_enumeration_of_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = brute_force(n, c, k)
            assert pass_at_k_exact(n, c, k) == expected, (n, c, k)
            assert pass_at_k(n, c, k) == float(expected), (n, c, k)


def reference_4096(c: int, k: int) -> Fraction:
    # product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), in exact fractions
    n = 4096
    if n - c < k:
        return Fraction(1)
    return 1 - prod((Fraction(i - k, i) for i in range(n - c + 1, n + 1)), start=Fraction(1))


@pytest.mark.parametrize(
    "c,k",
    [(0, 1), (1, 1), (1, 2), (1, 4096), (2, 2048), (7, 100), (100, 7), (2048, 2048), (4000, 64), (4095, 1), (4096, 1)],
)
def test_n_4096_against_fractions(c, k):
    expected = reference_4096(c, k)
    assert pass_at_k_exact(4096, c, k) == expected
    assert pass_at_k(4096, c, k) == float(expected)


def test_n_4096_extremes_keep_their_digits():
    # 1 correct of 4096, k = 1: exactly 1/4096 (a float 1 - (1 - 1/4096) would lose digits)
    assert pass_at_k(4096, 1, 1) == 1 / 4096
    # 1 wrong of 4096, k = 2: 1 - C(1,2)/C(4096,2) = 1; k = 1: 1 - 1/4096
    assert pass_at_k(4096, 4095, 2) == 1.0
    assert pass_at_k(4096, 4095, 1) == 4095 / 4096
    # tiny values: C(4095, 2)/C(4096, 2) = 4094/4096, so pass@2 with c = 1 is 2/4096
    assert pass_at_k(4096, 1, 2) == 2 / 4096
    tiny = pass_at_k(4096, 1, 1)
    assert 0 < tiny < 1e-3
    # a naive float computation overflows here
    with pytest.raises(OverflowError):
        float(comb(4096, 2048))
    assert pass_at_k(4096, 10, 2048) == float(reference_4096(10, 2048))


def test_numpy_integers_are_accepted():
    assert pass_at_k(np.int64(10), np.int64(3), np.int32(2)) == float(Fraction(8, 15))


@pytest.mark.parametrize(
    "n,c,k,message",
    [
        (5, 6, 1, "0 <= c <= n"),
        (5, -1, 1, "0 <= c <= n"),
        (5, 2, 6, "1 <= k <= n"),
        (5, 2, 0, "1 <= k <= n"),
        (5, 2, -3, "1 <= k <= n"),
        (0, 0, 1, "n >= 1"),
        (5.0, 2, 1, "n must be an integer"),
        (5, 2.5, 1, "c must be an integer"),
        (5, True, 1, "c must be an integer"),
    ],
)
def test_errors(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match=message):
        pass_at_k_exact(n, c, k)


def test_mean_helpers():
    assert mean_at_n([0, 2, 4], 4) == 0.5
    assert mean_pass_at_k([4, 4], [1, 0], 2) == float((1 - Fraction(comb(3, 2), comb(4, 2))) / 2)
    assert mean_pass_at_k([4096, 8], [1, 8], 1) == float((Fraction(1, 4096) + 1) / 2)
    with pytest.raises(ValueError, match="no problems"):
        mean_at_n([], 4)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        mean_at_n([5], 4)
    with pytest.raises(ValueError, match="equally long"):
        mean_pass_at_k([4], [1, 2], 1)
