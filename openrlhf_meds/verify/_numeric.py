"""Plain numeric literals, exactly: "-12", "0.25", "4.5e33", "2.88 \\times 10^{-19}", "10^{-5}".

Used to check math-verify's "equal" on a pair of such numbers: it compares floats to 6
decimal places and differences of products with evalf(chop=True), so any two numbers
below ~1e-7 come out equal (1.3e-27 "=" 2.9e-19). Regular expressions with bounded
exponents and Fractions of at most ~10^9999: fast, and it cannot hang.
"""

from __future__ import annotations

import re
from fractions import Fraction

REL_TOL = Fraction(1, 10**6)

_NUMBER = re.compile(
    r"\s*(?P<sign>[-+]?)\s*"
    r"(?:(?P<mant>\d+\.?\d*|\.\d+)(?:[eE](?P<e>[-+]?\d{1,4}))?"
    r"(?:\s*(?:\\times|\\cdot)\s*10\s*\^\s*(?:\{\s*(?P<p1>[-+]?\d{1,4})\s*\}|(?P<p2>\d)))?"
    r"|10\s*\^\s*(?:\{\s*(?P<p3>[-+]?\d{1,4})\s*\}|(?P<p4>\d)))\s*"
)


def parse_number(text: str) -> Fraction | None:
    """The exact value of a plain numeric literal, or None if `text` is anything else."""
    if len(text) > 100:
        return None
    m = _NUMBER.fullmatch(text)
    if not m:
        return None
    g = m.groupdict()
    mantissa = Fraction(g["mant"]) if g["mant"] else Fraction(1)
    exponent = int(g["e"] or 0) + int(g["p1"] or g["p2"] or g["p3"] or g["p4"] or 0)
    value = mantissa * Fraction(10) ** exponent
    return -value if g["sign"] == "-" else value


def numbers_differ(answer: str, label: str) -> bool:
    """True when both are plain numeric literals that differ by more than REL_TOL relative."""
    a, b = parse_number(answer), parse_number(label)
    if a is None or b is None:
        return False
    scale = max(abs(a), abs(b))
    return scale > 0 and abs(a - b) > REL_TOL * scale
