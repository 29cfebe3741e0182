"""Evaluation: the unbiased pass@k estimator (`passk.py`) and, in `python -m openrlhf_meds.eval`,
sampling and scoring of the benchmark sets: `data.py` (the paper's benchmarks or your files),
`generate.py` (samples with vLLM, scored), `report.py` (pass@k tables with intervals, plots)."""

from .passk import mean_at_n, mean_pass_at_k, pass_at_k, pass_at_k_exact, powers_of_two_up_to

__all__ = ["mean_at_n", "mean_pass_at_k", "pass_at_k", "pass_at_k_exact", "powers_of_two_up_to"]
