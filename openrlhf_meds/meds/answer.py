"""Locate the first answer token of a rollout (docs/algorithm.md, the feature: steps 1-2)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

BRACE_WINDOW = 10  # the fallback looks for "{" in the "boxed" token and the 9 after it

# Per tokenizer: the token ids of "\\boxed{" and, for every vocabulary id, whether that
# token's decoded text contains "boxed" / "{" (built once: decoding 150k tokens takes time,
# and even len(tokenizer) costs ~70 ms in transformers 5, so it is not re-checked per call).
_vocab_cache: weakref.WeakKeyDictionary[Any, tuple[np.ndarray, np.ndarray, np.ndarray]] = weakref.WeakKeyDictionary()


def _vocab_tables(tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tables = _vocab_cache.get(tokenizer)
    if tables is None:
        ids = [[i] for i in range(len(tokenizer))]
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # The Rust backend decodes the whole vocabulary ~10x faster than batch_decode; the
        # Python-side space clean-up it skips cannot add or remove "boxed" or "{".
        texts = (
            backend.decode_batch(ids, skip_special_tokens=False) if backend is not None else tokenizer.batch_decode(ids)
        )
        pattern = np.asarray(tokenizer.encode("\\boxed{", add_special_tokens=False), dtype=np.int64)
        has_boxed = np.fromiter(("boxed" in t for t in texts), dtype=bool, count=len(texts))
        has_brace = np.fromiter(("{" in t for t in texts), dtype=bool, count=len(texts))
        tables = _vocab_cache[tokenizer] = (pattern, has_boxed, has_brace)
    return tables


def _as_ids(response_ids: Sequence[int] | np.ndarray | Any) -> np.ndarray:
    if hasattr(response_ids, "detach"):  # a torch tensor, possibly on an accelerator
        response_ids = response_ids.detach().cpu().numpy()
    ids = np.asarray(response_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"answer_target: response_ids must be 1-D, got shape {ids.shape}")
    return ids


def _last_exact_match(ids: np.ndarray, pattern: np.ndarray) -> int | None:
    """Index of the last token of the last occurrence of `pattern` in `ids`."""
    m = len(pattern)
    if m == 0 or len(ids) < m:
        return None
    # Candidates end with the pattern's last token; check them from the end.
    for end in np.flatnonzero(ids[m - 1 :] == pattern[-1])[::-1] + (m - 1):
        if np.array_equal(ids[end - m + 1 : end + 1], pattern):
            return int(end)
    return None


def _flag(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    # Ids past the tokenizer (a model's padded embedding rows) decode to nothing.
    inside = ids < len(table)
    return inside & table[np.where(inside, ids, 0)]


def answer_target(response_ids, tokenizer) -> tuple[int, int] | None:
    """Find the brace token of the final `\\boxed{` and the first answer token after it.

    Returns `(p, y_star)`: `p` is the index in `response_ids` of the brace token (the last
    token of the last exact match of `tokenizer.encode("\\boxed{")`, else the first token
    whose text contains "{" among the last "boxed"-containing token and the 9 tokens after
    it), and `y_star = response_ids[p + 1]`. Returns None if no brace token is found or
    it is the last response token (the rollout has no feature).

    `response_ids`: the response only (no prompt), as a list, numpy array or 1-D tensor.
    """
    ids = _as_ids(response_ids)
    pattern, has_boxed, has_brace = _vocab_tables(tokenizer)
    p = _last_exact_match(ids, pattern)
    if p is None:
        boxed = np.flatnonzero(_flag(has_boxed, ids))
        if boxed.size == 0:
            return None
        start = int(boxed[-1])
        braces = np.flatnonzero(_flag(has_brace, ids[start : start + BRACE_WINDOW]))
        if braces.size == 0:
            return None
        p = start + int(braces[0])
    if p + 1 >= len(ids):
        return None
    return p, int(ids[p + 1])
