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
    # Only the LAST "boxed" token is tried, even if an earlier one has a brace after it.
    ids = tok.encode("So $\\boxed{3}$") + [boxed] + [filler] * 12
    assert answer_target(ids[:-13], tok) is not None
    assert answer_target(ids, tok) is None


@pytest.mark.parametrize("text", ["No box here: the answer is 4.", "", "boxed in, 7"])
def test_no_answer(qwen_tokenizer, text):
    assert answer_target(qwen_tokenizer.encode(text), qwen_tokenizer) is None


@pytest.mark.parametrize("text", ["The answer is \\boxed{", "\\boxed{", "The answer is $\\boxed{"])
def test_brace_as_last_token(qwen_tokenizer, text):
    assert answer_target(qwen_tokenizer.encode(text), qwen_tokenizer) is None


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
