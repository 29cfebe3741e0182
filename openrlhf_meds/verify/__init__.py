"""The math answer verifier: the last \\boxed{} of a response against a label.

    score(response, label)          1.0 or 0.0; never raises on any input, never hangs
    score_batch(responses, labels)  the same for many pairs, spread over the worker pool
    extract_boxed(text)             the contents of the last \\boxed{...} / \\fbox{...}, or None
    stats() / reset_stats()         counters: calls, timeouts, no_box, errors, cached
    clear_cache()                   forget the cached verdicts (benchmarks)
    warmup() / shutdown()           start the worker pool ahead of time / kill it

`mode="math_verify"` (the default) compares with math-verify (`parse` + `verify`) in a small
pool of worker processes fed over pipes: a comparison past its `timeout` gets its worker
killed and replaced, without signals, so `score` works from any thread (Ray actors, OpenRLHF's
`asyncio.to_thread` reward call). Answer and label that are both plain integers are compared
in-process (`int(a) == int(b)`, what math-verify does for them), and verdicts are cached per
(answer, label). `mode="official"` is the Hendrycks MATH `is_equiv` of the official MEDS run
(`official.py`), in-process. Two corrections around math-verify, both for plain numbers: an
answer or label written in e-notation ("4.5e33", which math-verify reads as 4.5 * e * 33) is
rewritten "4.5 \\times 10^{33}" first, and math-verify's "equal" on two plain numbers that
differ by more than one part in 10^6 is overruled (it rounds to 6 decimal places, so all
numbers below ~1e-7 look equal). docs/verifier.md has the measured agreement and timings.

Modules: `boxed.py` (answer extraction), `_numeric.py` (plain numbers), `_pool.py` and
`_worker.py` (the worker pool), `official.py` (the official run's check).
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence

from . import _pool
from ._numeric import numbers_differ
from .boxed import extract_boxed
from .official import is_equiv, strip_string

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER_CHARS",
    "MODES",
    "clear_cache",
    "extract_boxed",
    "is_equiv",
    "reset_stats",
    "score",
    "score_batch",
    "shutdown",
    "stats",
    "strip_string",
    "warmup",
]

DEFAULT_TIMEOUT = 5.0  # seconds per comparison; the slowest label-vs-solution pair of MATH-500 + Minerva takes ~1 s
MODES = ("math_verify", "official")
_PLAIN_INT = re.compile(r"\s*-?\d{1,30}\s*")
_E_NOTATION = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?\d{1,4})\s*")
_CACHE_SIZE = 1 << 16
_CACHE_MAX_CHARS = 2000  # longer (answer, label) pairs are not kept
# Longer answers or labels are not compared (score 0, counted as errors): math-verify's parse
# time grows with length, so a long one could take seconds on one machine and not on another.
# The longest label of the paper's five benchmarks has 210 characters.
MAX_ANSWER_CHARS = 1000

_lock = threading.Lock()
_counts: Counter = Counter()
_cache: OrderedDict[tuple[str, str], float] = OrderedDict()
_STAT_KEYS = ("calls", "timeouts", "no_box", "errors", "cached")


def stats() -> dict[str, int]:
    """Counters since import (or `reset_stats`), one per scored response.

    calls: responses scored; no_box: no complete last box (score 0); timeouts: comparisons
    killed at their time limit (score 0); errors: empty labels, labels math-verify cannot
    read, answers or labels over MAX_ANSWER_CHARS characters (not compared), worker crashes
    (e.g. out of memory) and workers that could not start (score 0);
    cached: verdicts served from the cache.
    """
    with _lock:
        return {k: _counts[k] for k in _STAT_KEYS}


def reset_stats() -> None:
    """Zero the counters of `stats()`."""
    with _lock:
        _counts.clear()


def clear_cache() -> None:
    """Forget the cached (answer, label) verdicts of this process."""
    with _lock:
        _cache.clear()


def warmup() -> int:
    """Start the math-verify workers now and wait until they are ready (each imports sympy,
    about a second); returns how many are. Optional: the first call starts them otherwise."""
    return _pool.get_pool().warmup()


def shutdown() -> None:
    """Kill the worker processes (done at exit too); a later call starts new ones."""
    _pool.shutdown()


def _e_notation_as_latex(text: str) -> str:
    # math-verify reads "4.5e33" as 4.5 * e * 33 (Euler's e); a whole answer in e-notation is
    # unambiguous, so it is rewritten "4.5 \times 10^{33}" first (a quarter of Minerva's labels).
    m = _E_NOTATION.fullmatch(text)
    return f"{m.group(1)} \\times 10^{{{m.group(2)}}}" if m else text


def _cache_get(key: tuple[str, str]) -> float | None:
    with _lock:
        v = _cache.get(key)
        if v is not None:
            _cache.move_to_end(key)
        return v


def _cache_put(key: tuple[str, str], v: float) -> None:
    if len(key[0]) + len(key[1]) > _CACHE_MAX_CHARS:
        return
    with _lock:
        _cache[key] = v
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def score(response: str, label: str, mode: str = "math_verify", timeout: float = DEFAULT_TIMEOUT) -> float:
    """1.0 if the last \\boxed{...} of `response` equals `label`, else 0.0.

    mode: "math_verify" (math-verify's equivalence: 0.5 = \\frac{1}{2}, x = 3 ~ 3, sets in any
    order, units dropped) or "official" (Hendrycks MATH string equivalence). timeout: seconds
    one comparison may take once a worker has it (waiting for a free worker is not counted);
    past it the answer scores 0 and counts in `stats()["timeouts"]`. No box, an unclosed last
    box, an empty box or an empty label score 0. Raises only for an unknown mode or a
    non-positive timeout.
    """
    return score_batch([response], [label], mode=mode, timeout=timeout)[0]


def score_batch(
    responses: Sequence[str],
    labels: Sequence[str],
    mode: str = "math_verify",
    timeout: float = DEFAULT_TIMEOUT,
    statuses: list | None = None,
) -> list[float]:
    """`score` of each (response, label) pair, in order.

    Duplicated (answer, label) pairs are compared once, and the remaining comparisons are sent
    in chunks to all the pool's workers at once, each with its own `timeout`. Raises only for
    an unknown mode, a non-positive timeout or sequences of different lengths. A list passed
    as `statuses` receives one entry per pair: None (compared), "no_box", "timeout" or "error".
    """
    if mode not in MODES:
        raise ValueError(f"score: mode must be one of {MODES}, got {mode!r}")
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"score: timeout must be > 0 seconds, got {timeout}")
    if len(responses) != len(labels):
        raise ValueError(f"score_batch: {len(responses)} responses but {len(labels)} labels")
    out = [0.0] * len(responses)
    status_of: list = [None] * len(responses)
    counts: Counter = Counter(calls=len(responses))
    pending: dict[tuple[str, str], list[int]] = {}
    for i, (response, label) in enumerate(zip(responses, labels)):
        try:
            answer = extract_boxed(response)
            if answer is None:
                counts["no_box"] += 1
                status_of[i] = "no_box"
                continue
            label = "" if label is None else str(label)
            if mode == "official":
                out[i] = float(is_equiv(answer, label))
                continue
            if not label.strip():
                counts["errors"] += 1
                status_of[i] = "error"
                continue
            if not answer.strip():
                continue
            if len(answer) > MAX_ANSWER_CHARS or len(label) > MAX_ANSWER_CHARS:
                counts["errors"] += 1
                status_of[i] = "error"
                continue
            answer, label = _e_notation_as_latex(answer), _e_notation_as_latex(label)
            if _PLAIN_INT.fullmatch(answer) and _PLAIN_INT.fullmatch(label):
                # At most 30 digits each: this cannot take long, and math-verify compares such
                # integers exactly too (tests/verify check the two agree).
                out[i] = float(int(answer) == int(label))
                continue
            cached = _cache_get((answer, label))
            if cached is not None:
                out[i] = cached
                counts["cached"] += 1
                continue
            pending.setdefault((answer, label), []).append(i)
        except Exception:  # e.g. a label whose str() raises
            counts["errors"] += 1
            status_of[i] = "error"
    if pending:
        keys = list(pending)
        try:
            results = _pool.get_pool().map(keys, timeout)
        except Exception:
            results = [(0.0, _pool.CRASH)] * len(keys)
        for key, (verdict, status) in zip(keys, results):
            indices = pending[key]
            if status is None:
                if verdict and numbers_differ(*key):  # math-verify's 6-decimal float rounding
                    verdict = 0.0
                _cache_put(key, verdict)
                for i in indices:
                    out[i] = verdict
            else:
                counts["timeouts" if status == _pool.TIMEOUT else "errors"] += len(indices)
                for i in indices:
                    status_of[i] = "timeout" if status == _pool.TIMEOUT else "error"
    with _lock:
        _counts.update(counts)
    if statuses is not None:
        statuses[:] = status_of
    return out
