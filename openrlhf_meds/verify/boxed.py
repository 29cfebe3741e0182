"""The final answer of a response: the contents of its last \\boxed{...} or \\fbox{...}."""

from __future__ import annotations

import re

_OPENERS = ("\\boxed{", "\\fbox{")
_BRACE = re.compile(r"[{}]")


def extract_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}) in `text`, braces balanced.

    "Last" is the right-most opening, so `\\boxed{\\boxed{5}}` gives "5". Nested braces are
    kept (`\\boxed{\\frac{1}{2}}` gives "\\frac{1}{2}"). When the last box never closes the
    response has no answer (None), even if an earlier box is complete; so does a response
    without a box, or one that is not a string. Braces are counted as written, escaped ones
    (`\\{`) included, as the MATH reference code and math-verify count them.
    """
    if not isinstance(text, str):
        return None
    start = max(text.rfind(opener) for opener in _OPENERS)
    if start < 0:
        return None
    begin = text.index("{", start) + 1
    depth = 1
    for m in _BRACE.finditer(text, begin):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[begin : m.start()]
    return None
