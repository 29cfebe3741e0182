"""answer_target on Qwen's real tokenizer (docs/algorithm.md, the feature: steps 1-2)."""

import numpy as np
import pytest
import torch

from openrlhf_meds.meds.answer import answer_target


def pieces(tokenizer, ids):
    return [tokenizer.decode([i]) for i in ids]


def target_text(tokenizer, ids):
    found = answer_target(ids, tokenizer)
    return None if found is None else (found[0], tokenizer.decode([found[1]]))


def test_exact_match_path(qwen_tokenizer):
    tok = qwen_tokenizer
    assert pieces(tok, tok.encode("\\boxed{", add_special_tokens=False)) == ["\\", "boxed", "{"]
    ids = tok.encode("Thus:\n\\boxed{7}")
    assert pieces(tok, ids) == ["Thus", ":\n", "\\", "boxed", "{", "7", "}"]
    assert answer_target(ids, tok) == (4, ids[5])
    assert target_text(tok, ids) == (4, "7")


def test_space_before_backslash_needs_the_fallback(qwen_tokenizer):
    # In context Qwen merges the space into the backslash: " \\boxed{" is `Ġ\`, `boxed`, `{`,
    # so encode("\\boxed{") = `\`, `boxed`, `{` never matches and the fallback decides.
    tok = qwen_tokenizer
    ids = tok.encode("So the answer is \\boxed{42}.")
    assert pieces(tok, ids) == ["So", " the", " answer", " is", " \\", "boxed", "{", "4", "2", "}."]
    # Qwen splits numbers into digits: the first answer token of 42 is "4".
    assert target_text(tok, ids) == (6, "4")


def test_dollar_backslash_and_brace_backslash(qwen_tokenizer):
    tok = qwen_tokenizer
    ids = tok.encode("The answer is $\\boxed{\\frac{1}{2}}$.")
    assert pieces(tok, ids)[3:7] == [" $\\", "boxed", "{\\", "frac"]
    assert target_text(tok, ids) == (5, "frac")  # the brace token is `{\`


def test_last_occurrence_wins(qwen_tokenizer):
    tok = qwen_tokenizer
    exact = tok.encode("\\boxed{3} is wrong.\n\\boxed{5}")
    p, y = answer_target(exact, tok)
    assert tok.decode([y]) == "5" and pieces(tok, exact)[p] == "{" and p == len(exact) - 3
    fallback = tok.encode("First $\\boxed{3}$, then $\\boxed{5}$")
    p, y = answer_target(fallback, tok)
    assert tok.decode([y]) == "5" and p == len(fallback) - 3


def test_an_exact_match_beats_a_later_fallback_match(qwen_tokenizer):
    # Reference semantics: the fallback only runs when there is no exact match at all.
    tok = qwen_tokenizer
    ids = tok.encode("\\boxed{1} or maybe $\\boxed{2}$")
    assert target_text(tok, ids) == (2, "1")


def test_brace_window_is_ten_tokens(qwen_tokenizer):
    tok = qwen_tokenizer
    (boxed,) = tok.encode("boxed")
    (filler,) = tok.encode(" x")
    (brace,) = tok.encode("{")
    (seven,) = tok.encode("7")
    # The brace at offset 9 from the "boxed" token (the 10th token counting it) is found ...
    ids = [boxed] + [filler] * 8 + [brace, seven]
    assert answer_target(ids, tok) == (9, seven)
    # ... at offset 10 it is not.
    assert answer_target([boxed] + [filler] * 9 + [brace, seven], tok) is None
    # Tokens past the end of the response are no window.
    assert answer_target([filler, boxed, filler, brace], tok) is None


def test_a_last_boxed_without_brace_passes_the_scan_to_an_earlier_one(qwen_tokenizer):
    tok = qwen_tokenizer
    (boxed,) = tok.encode("boxed")
    (filler,) = tok.encode(" x")
    head = tok.encode("So $\\boxed{3}$")
    assert pieces(tok, head) == ["So", " $\\", "boxed", "{", "3", "}$"]
    # The last "boxed" has no "{" in its 10-token window: the earlier one's brace is used.
    assert target_text(tok, head + [boxed] + [filler] * 12) == (3, "3")
    # Text as a model writes it: a trailing "boxed" in prose, no brace after it.
    ids = tok.encode("Hence $\\boxed{12}$, the value we boxed earlier")
    assert pieces(tok, ids)[2:6] == [" $\\", "boxed", "{", "1"] and pieces(tok, ids)[-2:] == [" boxed", " earlier"]
    assert target_text(tok, ids) == (4, "1")
    # Every "boxed" without a brace in its window: no feature.
    assert answer_target([boxed] + [filler] * 10 + [boxed] + [filler] * 10, tok) is None


def test_several_boxes_the_last_one_wins_on_the_fallback(qwen_tokenizer):
    tok = qwen_tokenizer
    ids = tok.encode("Try $\\boxed{1}$, no: $\\boxed{2}$, finally $\\boxed{9}$ done")
    p, y = answer_target(ids, tok)
    assert (pieces(tok, ids)[p], tok.decode([y])) == ("{", "9")
    assert pieces(tok, ids)[p - 1 : p + 3] == ["boxed", "{", "9", "}$"]


def test_case_variants_on_qwens_vocabulary(qwen_tokenizer):
    # Qwen's vocabulary has no upper-case "boxed" token: "BOXED" and "Boxed" are split into
    # "BOX"+"ED" and "Box"+"ed", so no token contains "boxed" in any case and the rule finds none.
    tok = qwen_tokenizer
    assert [t for t in tok.convert_ids_to_tokens(list(range(len(tok)))) if "boxed" in t.lower()] == [
        "Ġboxed",
        "boxed",
    ]
    for text in ["The answer is \\BOXED{7}", "The answer is \\Boxed{7}", "Boxed{7}"]:
        assert answer_target(tok.encode(text), tok) is None, text


def test_case_insensitive_boxed_token():
    # Qwen's tokenizer with "BOXED" and "Boxed" added as tokens (as a fine-tuned vocabulary
    # may have): the fallback matches them; the exact match stays lower-case.
    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    tok = build_qwen_tokenizer()  # a fresh copy: the session fixture is shared
    tok.add_tokens(["BOXED", "Boxed"])
    ids = tok.encode("The answer is \\BOXED{7}")
    assert pieces(tok, ids)[-4:] == ["BOXED", "{", "7", "}"]
    assert target_text(tok, ids) == (len(ids) - 3, "7")
    ids = tok.encode("So Boxed{5} it is")
    assert pieces(tok, ids) == ["So", " ", "Boxed", "{", "5", "}", " it", " is"]
    assert target_text(tok, ids) == (3, "5")
    # An exact lower-case match anywhere beats a later upper-case one.
    ids = tok.encode("\\boxed{1} then \\BOXED{2}")
    assert target_text(tok, ids) == (2, "1")


@pytest.mark.parametrize("text", ["No box here: the answer is 4.", "", "boxed in, 7"])
def test_no_answer(qwen_tokenizer, text):
    assert answer_target(qwen_tokenizer.encode(text), qwen_tokenizer) is None


# The last one: the fallback stops at the first brace it finds, even a last-token one, and
# does not go back to the earlier complete box.
@pytest.mark.parametrize(
    "text", ["The answer is \\boxed{", "\\boxed{", "The answer is $\\boxed{", "So $\\boxed{3}$ or $\\boxed{"]
)
def test_brace_as_last_token(qwen_tokenizer, text):
    ids = qwen_tokenizer.encode(text)
    assert pieces(qwen_tokenizer, ids)[-2:] == ["boxed", "{"]
    assert answer_target(ids, qwen_tokenizer) is None


def test_input_types_and_long_responses(qwen_tokenizer):
    tok = qwen_tokenizer
    ids = tok.encode("Step 1: 2 + 2 = 4. " * 2000 + "So $\\boxed{4}$.<|endoftext|>")
    assert pieces(tok, ids)[-5:] == ["{", "4", "}", "$.", "<|endoftext|>"]
    want = (len(ids) - 5, tok.encode("4")[0])
    assert answer_target(ids, tok) == want
    assert answer_target(np.asarray(ids, dtype=np.int32), tok) == want
    assert answer_target(torch.tensor(ids), tok) == want
    # Ids past the tokenizer's vocabulary (a model's padded embedding rows) are no text.
    assert answer_target([151900] + ids, tok) == (want[0] + 1, want[1])
    with pytest.raises(ValueError, match="1-D"):
        answer_target(torch.tensor([ids]), tok)


def test_brace_candidacy_streamed_gives_answer_targets_brace(qwen_tokenizer):
    """Scanning a response token by token with brace_candidacy and keeping the latest exact
    and the latest fallback candidate finds answer_target's brace (exact first), on 3,000
    random responses over tokens that make the rules interact: the `\\boxed{` pattern,
    other "boxed" tokens, other brace tokens, plain tokens."""
    from openrlhf_meds.meds.answer import brace_candidacy

    alphabet = [59, 79075, 90, 73664, 1611, 291, 2979, 15170, 314, 87, 10]  # \ boxed { ' boxed' B oxed {{ }{ ' {' x +
    rng = np.random.default_rng(0)
    kinds = {"exact": 0, "fallback": 0}
    for _ in range(3000):
        ids = rng.choice(alphabet, size=int(rng.integers(0, 30))).tolist()
        if rng.random() < 0.3:  # random tokens rarely spell `\\boxed{`
            at = int(rng.integers(0, len(ids) + 1))
            ids[at:at] = [59, 79075, 90]
        exact = fallback = None
        for n in range(1, len(ids) + 1):
            is_exact, is_fallback = brace_candidacy(ids[:n], qwen_tokenizer)
            exact = n - 1 if is_exact else exact
            fallback = n - 1 if is_fallback else fallback
        p = exact if exact is not None else fallback
        want = None if p is None or p + 1 >= len(ids) else (p, ids[p + 1])
        assert answer_target(ids, qwen_tokenizer) == want, ids
        if want is not None:
            kinds["exact" if exact is not None else "fallback"] += 1
    assert min(kinds.values()) > 100  # both rules were exercised


def test_brace_candidacy_ignores_ids_outside_the_vocabulary(qwen_tokenizer):
    from openrlhf_meds.meds.answer import brace_candidacy

    assert brace_candidacy([], qwen_tokenizer) == (False, False)
    assert brace_candidacy([79075, 10**9], qwen_tokenizer) == (False, False)
    assert brace_candidacy([10**9, 90], qwen_tokenizer) == (False, False)
    assert brace_candidacy([59, 79075, 90], qwen_tokenizer) == (True, True)


def test_brace_scanner_equals_brace_candidacy_on_every_stream_at_every_step(qwen_tokenizer):
    """BraceScanner (all rows at once, one token per row per step) gives brace_candidacy of
    every stream after every token: 400 random streams over the tokens that make the rules
    interact (plus ids past the vocabulary, as a model's padded rows, and async placeholders -1), rows joining
    mid-stream by `reset`, and rows swapped."""
    from openrlhf_meds.meds.answer import BraceScanner, brace_candidacy

    alphabet = [59, 79075, 90, 73664, 1611, 291, 2979, 15170, 314, 87, 10, 151900, 200000, -1]
    rng = np.random.default_rng(1)
    rows, length = 400, 40
    streams = rng.choice(alphabet, size=(rows, length))
    for r in range(0, rows, 3):  # `\\boxed{` spelled out now and then
        at = int(rng.integers(0, length - 3))
        streams[r, at : at + 3] = [59, 79075, 90]
    scanner = BraceScanner(qwen_tokenizer)
    joined = rng.integers(0, length // 2, size=rows)  # the step at which each row is reset
    checked = {"exact": 0, "fallback": 0}
    for t in range(length):
        for r in np.flatnonzero(joined == t):
            scanner.reset(int(r), streams[r, :t].tolist())
        if t == length // 2:  # a swap exchanges the rows' states: swap the streams too
            scanner.swap(5, 7)
            streams[[5, 7]] = streams[[7, 5]]
            joined[[5, 7]] = joined[[7, 5]]
        rows, kinds = scanner.step(streams[:, t])
        flags = np.zeros(len(streams), int)
        flags[rows] = kinds
        for r in np.flatnonzero(joined <= t):
            want = brace_candidacy(streams[r, : t + 1].tolist(), qwen_tokenizer)
            got = (bool(flags[r] & scanner.EXACT), bool(flags[r] & scanner.FALLBACK))
            assert got == want, (r, t, streams[r, : t + 1].tolist())
            checked["exact"] += want[0]
            checked["fallback"] += want[1]
    assert min(checked.values()) > 50  # both rules were exercised
