"""Rule-based math verifier for OpenRLHF (`--reward.remote_url examples/scripts/reward_math.py`).

Score 1.0 when the last \\boxed{...} of the response equals the label after light
normalisation (spaces, `\\left`/`\\right`, `\\!`, a trailing period, `^\\circ`, `\\text{}`
wrappers, `dfrac`/`tfrac`, numeric equality such as 0.5 == 1/2 == \\frac{1}{2}), else 0.0.
MEDS reads `scores` (the raw verdict: correct = score >= 0.5); `rewards` equals it.
Replace this file with your own verifier (e.g. math-verify) if you need more.
"""

import re
from fractions import Fraction

from openrlhf_meds.demo.task import last_boxed

_STRIP = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", "$", "^\\circ", "^{\\circ}", " "]


def normalize(answer: str) -> str:
    s = answer.strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    for token in _STRIP:
        s = s.replace(token, "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").rstrip(".")
    return s


def _number(s: str):
    m = re.fullmatch(r"\\frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?\d+)/(-?\d+)", s)
    try:
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def score(response: str, label: str) -> float:
    boxed = last_boxed(response)
    if boxed is None:
        return 0.0
    a, b = normalize(boxed), normalize(str(label))
    if a == b:
        return 1.0
    x, y = _number(a), _number(b)
    return float(x is not None and x == y)


def reward_func(queries, prompts, labels):
    """OpenRLHF 0.11.2 entry point: one query at a time; values become tensors."""
    import torch

    responses = [q[len(p):] if q.startswith(p) else q for q, p in zip(queries, prompts)]
    scores = torch.tensor([score(r, l) for r, l in zip(responses, labels)]).squeeze(0)
    return {"rewards": scores, "scores": scores.clone(), "extra_logs": {}}
