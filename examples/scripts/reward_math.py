"""Rule-based math verifier for OpenRLHF (`--reward.remote_url examples/scripts/reward_math.py`).

Score 1.0 when the last \\boxed{...} of the response equals the label by math-verify
(`openrlhf_meds.verify.score`: 0.5 == 1/2 == \\frac{1}{2}, x = 3 ~ 3, sets in any order, units
dropped; worker processes with a hard per-answer timeout, safe in OpenRLHF's reward thread),
else 0.0. MEDS reads `scores` (the raw verdict: correct = score >= 0.5); `rewards` equals it.
Set OPENRLHF_MEDS_VERIFY_MODE=official for the Hendrycks MATH string equivalence instead, or
use `reward_math_official.py` (the official runs' verifier, what the recipes train with).
docs/verifier.md has the details and measurements.
"""

import os

from openrlhf_meds.verify import extract_boxed, score_batch

MODE = os.environ.get("OPENRLHF_MEDS_VERIFY_MODE", "math_verify")


def rewards(queries, prompts, labels, mode):
    """OpenRLHF's reward dict for `queries` (prompt + response) scored with `mode`."""
    import torch

    responses = [q[len(p) :] if q.startswith(p) else q for q, p in zip(queries, prompts)]
    scores = torch.tensor(score_batch(responses, labels, mode=mode)).squeeze(0)
    boxed = torch.tensor([float(extract_boxed(r) is not None) for r in responses]).squeeze(0)
    return {"rewards": scores, "scores": scores.clone(), "extra_logs": {"boxed": boxed}}


def reward_func(queries, prompts, labels):
    """OpenRLHF 0.11.2 entry point: one query at a time; values become tensors."""
    return rewards(queries, prompts, labels, MODE)
