"""Training data of the official MEDS runs (`python -m openrlhf_meds.data prepare`): DAPO-Math-17K
plus MATH levels 3-5 as the prompt/label JSONL the recipes in examples/scripts/ read
(`prepare.py`)."""

from .prepare import DataError, Prepared, SourceCounts, normalise_problem, parse_levels, prepare, strip_dapo_instruction

__all__ = [
    "DataError",
    "Prepared",
    "SourceCounts",
    "normalise_problem",
    "parse_levels",
    "prepare",
    "strip_dapo_instruction",
]
