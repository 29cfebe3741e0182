"""extract_boxed: the last \\boxed{}/\\fbox{}, balanced braces, no answer for an unclosed last box."""

import pytest

from openrlhf_meds.verify import extract_boxed


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last box wins
        ("x \\boxed{\\frac{1}{2}} y", "\\frac{1}{2}"),  # nested braces kept
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} and \\fbox{2}", "2"),
        ("\\fbox{1} and \\boxed{2}", "2"),
        ("\\boxed{\\boxed{5}}", "5"),  # right-most opening
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{}", ""),
        ("no box here", None),
        ("\\boxed{5} and \\boxed{6", None),  # unbalanced last box: no answer
        ("\\boxed{{5}", None),
        ("\\boxed 5", None),  # only the braced form
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_long_text_is_fast():
    import time

    text = "a" * 200_000 + "\\boxed{" + "{x}" * 20_000 + "}"
    t = time.perf_counter()
    assert extract_boxed(text) == "{x}" * 20_000
    assert time.perf_counter() - t < 1.0
