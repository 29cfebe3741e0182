"""mode="official": the Hendrycks MATH normalisation and string equality, quirks included."""

import pytest

from openrlhf_meds.verify import is_equiv, score, strip_string


@pytest.mark.parametrize(
    "raw,normalised",
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\frac1{x}", "\\frac{1}{x}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("\\$5", "5"),
        ("5 \\text{ cm}", "5"),
        ("50\\%", "50"),
        ("50%", "50%"),  # only \% is dropped
        (".5", "\\frac{1}{2}"),  # leading "." -> "0.", then 0.5 -> \frac{1}{2}
        ("0.25", "0.25"),  # only 0.5 is rewritten
        ("x = 3", "3"),
        ("k=3", "3"),
        ("abc=3", "abc=3"),  # lhs longer than 2 characters stays
        ("\\sqrt3", "\\sqrt{3}"),
        ("2\\sqrt{2}", "2\\sqrt{2}"),
        ("3/4", "\\frac{3}{4}"),
        ("x/4", "x/4"),
        ("1 \\\\ 2", "1\\2"),
        ("a\\!b", "ab"),
        ("1\n2", "12"),
        ("\\{.5\\}", "\\{0.5\\}"),
    ],
)
def test_strip_string(raw, normalised):
    assert strip_string(raw) == normalised


@pytest.mark.parametrize(
    "answer,label,expected",
    [
        ("\\dfrac{1}{2}", "\\frac12", True),
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "\\frac{1}{2}", True),
        ("x=5", "5", True),
        ("5\\text{ cm}", "5", True),
        ("90^\\circ", "90", True),
        ("\\left(2, 3\\right)", "(2,3)", True),
        ("0.50", "\\frac{1}{2}", False),  # string equality: no arithmetic
        ("\\sqrt{8}", "2\\sqrt{2}", False),
        ("(B)", "B", False),
        ("\\{3,1,2\\}", "\\{1,2,3\\}", False),
        ("3", "4", False),
        # steps that give up compare the strings as written
        ("5 \\text{ m} \\text{ s}", "5 \\text{ m} \\text{ s}", True),
        ("5 \\text{ m} \\text{ s}", "5", False),
        ("\\sqrt", "\\sqrt", True),
        (None, "3", False),
    ],
)
def test_is_equiv(answer, label, expected):
    assert is_equiv(answer, label) is expected


def test_official_mode_scores_the_last_box():
    assert score("first \\boxed{3}, finally \\boxed{\\dfrac{1}{2}}", "0.5", mode="official") == 1.0
    assert score("\\boxed{\\frac{1}{2}} wait, \\boxed{3}", "\\frac12", mode="official") == 0.0
    assert score("no box: 1/2", "\\frac{1}{2}", mode="official") == 0.0
    assert score("\\boxed{1/2", "\\frac{1}{2}", mode="official") == 0.0


def test_official_mode_is_in_process_and_never_slow():
    import time

    t = time.perf_counter()
    answer = "\\boxed{" + "\\frac" * 5000 + "9^{9^{9^{9}}}" + "}"
    assert score(answer, "1", mode="official") == 0.0
    assert time.perf_counter() - t < 1.0
