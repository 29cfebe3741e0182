"""The official MEDS runs' verifier for OpenRLHF (`--reward.remote_url examples/scripts/reward_math_official.py`).

`reward_math.py` with `mode="official"` always: the Hendrycks MATH equivalence of the last
\\boxed{} (the MATH `strip_string` normalisation, `openrlhf_meds.verify.official`), score 1.0
or 0.0; correct = score >= 0.5. The recipes in this folder train with it.
"""

import importlib.util
import os

MODE = "official"

# OpenRLHF loads reward files by path (not as a package): load the sibling the same way.
_spec = importlib.util.spec_from_file_location(
    "_reward_math", os.path.join(os.path.dirname(os.path.abspath(__file__)), "reward_math.py")
)
_reward_math = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reward_math)


def reward_func(queries, prompts, labels):
    """OpenRLHF 0.11.2 entry point: one query at a time; values become tensors."""
    return _reward_math.rewards(queries, prompts, labels, MODE)
