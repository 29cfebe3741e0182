"""Locate the first answer token of a rollout (docs/algorithm.md, the feature: steps 1-2)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

BRACE_WINDOW = 10  # the fallback looks for "{" in the "boxed" token and the 9 after it

# Per tokenizer: the token ids of "\\boxed{" and, for every vocabulary id, whether that
# token's raw string contains "boxed" (any case) / "{" (built once: 150k tokens take ~0.2 s,
# and even len(tokenizer) costs ~70 ms in transformers 5, so it is not re-checked per call).
# A tokenizer given new tokens after its first call keeps its old tables.
_vocab_cache: weakref.WeakKeyDictionary[Any, tuple[np.ndarray, np.ndarray, np.ndarray]] = weakref.WeakKeyDictionary()


def vocab_tables(tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(pattern, has_boxed, has_brace)` of `tokenizer`: the ids of `\\boxed{` and, per vocabulary
    id, whether its raw token string holds "boxed" (any case) / "{" (built once per tokenizer)."""
    tables = _vocab_cache.get(tokenizer)
    if tables is None:
        # The reference reads the raw token strings (convert_ids_to_tokens), not decoded text:
        # they differ for byte-fallback tokens such as sentencepiece's "<0x7B>" for "{".
        # Some remote-code tokenizers (tiktoken-based) give bytes; None marks an unused id.
        texts = [
            t.decode("utf-8", "replace") if isinstance(t, bytes) else (t or "")
            for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        ]
        pattern = np.asarray(tokenizer.encode("\\boxed{", add_special_tokens=False), dtype=np.int64)
        has_boxed = np.fromiter(("boxed" in t.lower() for t in texts), dtype=bool, count=len(texts))
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

    Returns `(p, y_star)`: `p` is the index in `response_ids` of the brace token and
    `y_star = response_ids[p + 1]`. The brace token is the last token of the last exact match
    of `tokenizer.encode("\\boxed{")`; without one, the fallback scans the raw token strings
    from the end for a token containing "boxed" in any case, and takes the first token
    containing "{" among it and the 9 tokens after it; a "boxed" token with no brace there
    passes the scan on to the previous "boxed" token. Returns None if no brace token is
    found or it is the last response token (the rollout has no feature).

    `response_ids`: the response only (no prompt), as a list, numpy array or 1-D tensor.
    """
    ids = _as_ids(response_ids)
    pattern, has_boxed, has_brace = vocab_tables(tokenizer)
    p = _last_exact_match(ids, pattern)
    if p is None:
        for start in np.flatnonzero(_flag(has_boxed, ids))[::-1].tolist():
            braces = np.flatnonzero(_flag(has_brace, ids[start : start + BRACE_WINDOW]))
            if braces.size:
                p = start + int(braces[0])
                break
        else:
            return None
    if p + 1 >= len(ids):
        return None
    return p, int(ids[p + 1])


def brace_candidacy(ids: Sequence[int], tokenizer) -> tuple[bool, bool]:
    """Could the last token of `ids` (a response so far) be the brace token that
    `answer_target` picks once the response ends? Returns `(exact, fallback)`: exact when
    `ids` ends with the tokens of `\\boxed{`; fallback when the fallback rule would pick this
    token for one of the "boxed" tokens among the last `BRACE_WINDOW`.

    It reads only the last `BRACE_WINDOW` tokens, so an engine can ask it as each token is
    generated. `answer_target`'s brace is always the latest exact candidate, or without
    one the latest fallback candidate (a later "boxed" token's first brace is never
    earlier), which is what in-stream capture keeps (openrlhf_meds.engine.vllm_features).
    """
    pattern, has_boxed, has_brace = vocab_tables(tokenizer)
    p = len(ids) - 1
    if p < 0 or not 0 <= ids[p] < len(has_brace) or not has_brace[ids[p]]:
        return False, False
    m = len(pattern)
    exact = m > 0 and p + 1 >= m and all(int(ids[p - m + 1 + j]) == pattern[j] for j in range(m))
    fallback = False
    for s in range(p, max(p - BRACE_WINDOW, -1), -1):
        t = int(ids[s])
        if s < p and 0 <= t < len(has_brace) and has_brace[t]:
            break  # this "boxed" token and every earlier one pick an earlier brace
        if 0 <= t < len(has_boxed) and has_boxed[t]:
            fallback = True
            break
    return bool(exact), fallback


class BraceScanner:
    """`brace_candidacy` for many token streams at once, one token per stream per step, with a
    few array lookups per step whatever the number of streams (an inference engine asks it for
    every running request at every decoding step).

    Each stream (a row) is in one of a few states: how much of `\\boxed{` its latest tokens
    match, and how many tokens ago its latest "boxed" token came if no token holding "{" came
    since and it is still in the fallback rule's reach. A token acts on the state only through
    its class (which token of `\\boxed{` it is, whether it holds "boxed", "{"), so one table maps
    ids to classes and two small tables give, per (state, class), the next state and whether
    the token is an exact / a fallback candidate. `step(last)` takes every row's newest token;
    a row joining mid-stream is `reset` from its tokens so far (only the last few are read)."""

    EXACT, FALLBACK = 1, 2  # bits of `step`'s flags

    def __init__(self, tokenizer):
        pattern, has_boxed, has_brace = vocab_tables(tokenizer)
        pattern, vocab = pattern.tolist(), len(has_brace)
        # Id -> class; ids past the vocabulary and -1 (async placeholders, rows without a
        # token: numpy reads index -1 as the last entry) are no token at all, as for
        # brace_candidacy. 2**18 entries cover every vocabulary the engine supports.
        kinds = {(-1, False, False): 0}  # (pattern token or -1, holds "{", holds "boxed") -> class
        self.classes = np.zeros(max(1 << 18, 2 * vocab), dtype=np.int16)
        for x in range(vocab):
            key = (x if x in pattern else -1, bool(has_brace[x]), bool(has_boxed[x]))
            self.classes[x] = kinds.setdefault(key, len(kinds))
        self.m, self.reach = len(pattern), BRACE_WINDOW - 1  # a brace at most this far after "boxed"
        # States: match j in 0..m, and the fallback's age a in 0..reach-1 or `reach` (out of reach).
        states = [(j, a) for j in range(self.m + 1) for a in range(self.reach + 1)]
        index = {state: i for i, state in enumerate(states)}
        if len(states) > 255:
            raise ValueError(f"BraceScanner: `\\boxed{{` is {self.m} tokens for this tokenizer (at most 24)")
        # One table: entry (state << shift | class) = the next state | the token's flags << 8.
        self.shift = max(1, (len(kinds) - 1).bit_length())
        self.table = np.zeros(len(states) << self.shift, dtype=np.uint16)
        for (j, a), i in index.items():
            for (token, brace, boxed), c in kinds.items():
                seq = pattern[:j] + [token]
                match = max(k for k in range(min(self.m, len(seq)) + 1) if seq[len(seq) - k :] == pattern[:k])
                exact = brace and self.m > 0 and match == self.m
                fallback = brace and (boxed or a < self.reach)
                age = self.reach if brace else 0 if boxed else min(a + 1, self.reach)
                flags = self.EXACT * exact + self.FALLBACK * fallback
                self.table[(i << self.shift) | c] = index[(match, age)] | flags << 8
        self.start = index[(0, self.reach)]
        self.context = max(self.m, BRACE_WINDOW)  # the tokens a row's state depends on
        self.state = np.zeros(0, dtype=np.int16)
        self._lists = None  # (classes, table) as Python lists, for `reset`

    def grow(self, rows: int) -> None:
        """Hold states for at least `rows` rows (new ones at the start state)."""
        if rows > len(self.state):
            self.state = np.concatenate([self.state, np.full(rows - len(self.state), self.start, np.int16)])

    def _next(self, state, cls):
        return self.table[(state << self.shift) | cls]

    def step(self, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance rows 0 .. len(last)-1 by their newest token `last[i]` (an int array of ids
        below `len(self.classes)`, or -1 for none). Returns `(rows, flags)`: the rows whose
        newest token is a candidate, and their `EXACT` / `FALLBACK` bits (`brace_candidacy`
        of each stream after that token)."""
        n = len(last)
        self.grow(n)
        entry = self._next(self.state[:n], self.classes[last])
        self.state[:n] = entry & 255
        rows = np.flatnonzero(entry >= 256)
        return rows, entry[rows] >> 8

    def reset(self, row: int, tokens: Sequence[int]) -> None:
        """Row `row` now holds a stream whose tokens so far are `tokens` (only the last
        `context` matter: the match is at most `\\boxed{` long, the fallback's reach
        `BRACE_WINDOW`)."""
        self.grow(row + 1)
        if self._lists is None:  # Python lists: a few list lookups per token beat numpy scalars
            self._lists = (self.classes.tolist(), self.table.tolist())
        classes, table = self._lists
        state = self.start
        for t in tokens[-self.context :]:
            state = table[(state << self.shift) | classes[t if 0 <= t < len(classes) else -1]] & 255
        self.state[row] = state

    def swap(self, a: int, b: int) -> None:
        """Exchange rows a and b's states."""
        self.grow(max(a, b) + 1)
        self.state[a], self.state[b] = self.state[b], self.state[a]
