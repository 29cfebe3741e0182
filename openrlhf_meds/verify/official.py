"""`mode="official"`: the Hendrycks MATH equivalence check (string normalisation, then string
equality), the verifier of the official MEDS run. Written here from the published description
of the MATH benchmark's `is_equiv` / `strip_string`; same steps, same order, same quirks
(e.g. "0.5" becomes \\frac{1}{2} but "0.25" stays as written; only `\\%` is dropped, not `%`).

Everything here is str.replace / split over the given strings: linear time, no parsing, so it
runs in-process and cannot hang.
"""

from __future__ import annotations


class _Fallback(Exception):
    """A step the reference code would crash on: the answers are compared as written."""


_DROP = ("\n", "\\!")
_REPLACE = (("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""), ("\\right", ""))
_DEGREES = ("^{\\circ}", "^\\circ")


def _units_removed(s: str) -> str:
    # "5 \text{ cm}" -> "5 ": units are spelled with a space after the \text{ brace.
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise _Fallback
    return parts[0]


def _sqrt_braced(s: str) -> str:
    # \sqrt3 -> \sqrt{3} (one character only: \sqrt32 -> \sqrt{3}2, as in the reference)
    head, *rest = s.split("\\sqrt")
    out = [head]
    for part in rest:
        if not part:
            raise _Fallback
        out.append("\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:]))
    return "".join(out)


def _fracs_braced(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{x} -> \frac{1}{x}; a \frac with fewer than two characters
    # after it leaves the whole string as it was.
    head, *rest = s.split("\\frac")
    out = [head]
    for part in rest:
        if not part:
            raise _Fallback
        if part[0] == "{":
            out.append("\\frac" + part)
            continue
        if len(part) < 2:
            return s
        a, b, tail = part[0], part[1], part[2:]
        out.append("\\frac{" + a + "}" + (b if b == "{" else "{" + b + "}") + tail)
    return "".join(out)


def _slash_to_frac(s: str) -> str:
    # "3/4" -> \frac{3}{4}, only when both sides are plain integers written canonically
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def strip_string(s: str) -> str:
    """The MATH benchmark's answer normalisation (see the module docstring); may raise _Fallback."""
    for token in _DROP:
        s = s.replace(token, "")
    for old, new in _REPLACE:
        s = s.replace(old, new)
    for token in _DEGREES:
        s = s.replace(token, "")
    s = s.replace("\\$", "")
    s = _units_removed(s)
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 3", "k=3" -> "3"
        s = sides[1]
    s = _sqrt_braced(s)
    s = s.replace(" ", "")
    s = _fracs_braced(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def is_equiv(answer: str | None, label: str | None) -> bool:
    """Hendrycks MATH equivalence: equal after `strip_string`, or equal as written when the
    normalisation gives up. No answer (None) is never equivalent to a label."""
    if answer is None or label is None:
        return answer is None and label is None
    try:
        return strip_string(answer) == strip_string(label)
    except _Fallback:
        return answer == label
