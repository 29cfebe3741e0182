"""Plain numeric literals, read exactly: what the re-check of math-verify's "equal" relies on."""

from fractions import Fraction

import pytest

from openrlhf_meds.verify._numeric import numbers_differ, parse_number


@pytest.mark.parametrize(
    "text,value",
    [
        ("-12", Fraction(-12)),
        (" 0.25 ", Fraction(1, 4)),
        (".5", Fraction(1, 2)),
        ("4.5e33", Fraction(45 * 10**32)),
        ("1E-3", Fraction(1, 1000)),
        ("2.88 \\times 10^{-19}", Fraction(288, 10**21)),
        ("3 \\cdot 10^8", Fraction(3 * 10**8)),
        ("10^{-5}", Fraction(1, 10**5)),
        ("-10^3", Fraction(-1000)),
        ("1/2", None),
        ("1,000", None),
        ("x", None),
        ("", None),
        ("1e99999", None),  # exponents of at most 4 digits
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "a,b,differ",
    [
        ("1.325 \\times 10^{-27}", "2.88e-19", True),
        ("1e-8", "5e-9", True),
        ("4.5e33", "4.5 \\times 10^{33}", False),
        ("0.1234561", "0.1234562", False),  # within one part in 10^6
        ("0", "-0", False),
        ("0", "1e-9", True),
        ("\\frac{1}{2}", "0.7", False),  # not a plain literal: left to math-verify
    ],
)
def test_numbers_differ(a, b, differ):
    assert numbers_differ(a, b) is differ
