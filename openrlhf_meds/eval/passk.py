"""The unbiased pass@k estimator (Chen et al., 2021) and mean@n, exact for any n.

pass@k = 1 - C(n-c, k) / C(n, k): the chance that k of the n samples, drawn without
replacement, hold at least one of the c correct ones. The ratio is computed as an exact
fraction of Python integers and rounded once, so n = 4096 neither overflows (C(4096, 2048)
has over 1200 digits) nor loses digits to cancellation when pass@k is close to 0 or 1.
`pass_at_k` divides the exact integers (C(n,k) - C(n-c,k)) / C(n,k) once, which Python rounds
correctly; `pass_at_k_exact` returns the Fraction itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import comb
from operator import index


def _check(n: int, c: int, k: int) -> tuple[int, int, int]:
    # numpy integers count as the ints they hold; floats and bools do not
    out = []
    for name, v in (("n", n), ("c", c), ("k", k)):
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(index(v))
        except TypeError:
            raise ValueError(f"pass_at_k: {name} must be an integer, got {v!r}") from None
    n, c, k = out
    if n < 1:
        raise ValueError(f"pass_at_k: need n >= 1 samples, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n correct samples, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    return n, c, k


def _miss_ratio(n: int, c: int, k: int) -> tuple[int, int]:
    # C(n-c, k) / C(n, k) == C(n-k, c) / C(n, c): take the side with the smaller binomials
    return (comb(n - c, k), comb(n, k)) if k <= c else (comb(n - k, c), comb(n, c))


def pass_at_k_exact(n: int, c: int, k: int) -> Fraction:
    """pass@k of a problem with c correct of n samples, as an exact Fraction.

    Raises ValueError unless 1 <= k <= n and 0 <= c <= n (integers).
    """
    n, c, k = _check(n, c, k)
    if n - c < k:  # every k-subset holds a correct sample
        return Fraction(1)
    miss, total = _miss_ratio(n, c, k)
    return Fraction(total - miss, total)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k)/C(n, k) for c correct of n samples, as the float
    nearest the exact value. Raises ValueError unless 1 <= k <= n and 0 <= c <= n."""
    n, c, k = _check(n, c, k)
    if n - c < k:
        return 1.0
    miss, total = _miss_ratio(n, c, k)
    # int / int is correctly rounded in Python however large the operands: no gcd needed
    return (total - miss) / total


def powers_of_two_up_to(n: int) -> list[int]:
    """The default k values of pass@k: 1, 2, 4, ... up to n."""
    return [2**i for i in range(index(n).bit_length()) if 2**i <= n]


def mean_at_n(correct: Sequence[int], n: int) -> float:
    """mean@n: the mean over problems of c/n (pass@1 averaged), for per-problem counts `correct`.

    Raises ValueError for an empty list or a count outside [0, n].
    """
    if len(correct) == 0:
        raise ValueError("mean_at_n: no problems")
    counts = [_check(n, c, 1)[1] for c in correct]
    return float(Fraction(sum(counts), index(n) * len(counts)))


def mean_pass_at_k(ns: Sequence[int], cs: Sequence[int], k: int) -> float:
    """pass@k averaged over problems (problem i: cs[i] correct of ns[i] samples), summed exactly.

    Raises ValueError for an empty list, lists of different lengths, or a bad (n, c, k).
    """
    if len(ns) != len(cs) or len(ns) == 0:
        raise ValueError(f"mean_pass_at_k: need equally long non-empty lists, got {len(ns)} and {len(cs)}")
    total = sum((pass_at_k_exact(n, c, k) for n, c in zip(ns, cs)), Fraction(0))
    return float(total / len(ns))
