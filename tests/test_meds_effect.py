"""benchmarks/meds_effect.py's report from synthetic runs and eval results (the study itself
runs for ~40 minutes: docs/meds-effect.md)."""

import argparse
import importlib.util
import json
import os

import pytest

spec = importlib.util.spec_from_file_location(
    "meds_effect", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "meds_effect.py")
)
meds_effect = importlib.util.module_from_spec(spec)
spec.loader.exec_module(meds_effect)


def eval_result(p1: float, p2: float) -> dict:
    return {d: {"pass@k": {"1": p1, "2": p2}, "mean@n": p1} for d in ("train", "heldout")}


def test_report_averages_the_seeds_of_each_arm(tmp_path):
    runs = {
        f"{arm}_seed{s}": {"scalars": {tag: {1: 0.1 * s, 2: 0.2 + s} for tag in meds_effect.TABLE}, "wall_s": 10.0}
        for arm in ("grpo", "meds")
        for s in (0, 1)
    }
    results = {"sft": eval_result(0.1, 0.2), "grpo_seed0": eval_result(0.2, 0.3), "grpo_seed1": eval_result(0.4, 0.5)}
    results |= {"meds_seed0": eval_result(0.3, 0.6), "meds_seed1": eval_result(0.3, 0.8)}
    args = argparse.Namespace(steps=2, lr=1e-3, n=2)
    meds_effect.report(str(tmp_path), runs, results, [0, 1], args, wall={"eval": 1.0, "total": 2.0})
    table = json.load(open(tmp_path / "results.json"))["pass@k"]
    assert table["heldout"]["grpo"]["pass@k"] == {"1": pytest.approx(0.3), "2": pytest.approx(0.4)}
    assert table["train"]["meds"]["pass@k"] == {"1": pytest.approx(0.3), "2": pytest.approx(0.7)}
    assert table["train"]["sft"]["mean@n"] == pytest.approx(0.1)
    md = (tmp_path / "results.md").read_text()
    assert "| GRPO | 30.0 | 40.0 | 30.0 |" in md and "| GRPO + MEDS | 30.0 | 70.0 | 30.0 |" in md
    # training metrics: mean over seeds at the first (0.05) and last step (0.7)
    assert "| accuracy of the rollouts | 0.050 -> 0.700 | 0.050 -> 0.700 |" in md
    assert (tmp_path / "meds_effect.png").read_bytes()[:4] == b"\x89PNG"
