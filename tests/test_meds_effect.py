"""benchmarks/meds_effect.py's statistics and report from synthetic runs and eval samples (the
study itself runs for about an hour: docs/meds-effect.md)."""

import argparse
import importlib.util
import json
import os

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "meds_effect", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "meds_effect.py")
)
meds_effect = importlib.util.module_from_spec(spec)
spec.loader.exec_module(meds_effect)

N = 4  # samples per problem


def samples(tag: str, dataset: str, right: dict[str, int]) -> list[dict]:
    """eval's samples.jsonl rows: `right[id]` of N samples right."""
    return [
        {"model": tag, "dataset": dataset, "id": i, "sample": j, "verdict": float(j < c)}
        for i, c in right.items()
        for j in range(N)
    ]


def test_contrast_is_the_paired_mean_difference_with_a_bootstrap_interval():
    rows = []
    for s in (0, 1):
        rows += samples(f"base_seed{s}", "heldout", {"a": 0, "b": 2, "c": 4})
        rows += samples(f"arm_seed{s}", "heldout", {"a": 1 + s, "b": 2, "c": 4})
    counts = meds_effect.correct_counts(rows)
    assert counts[("arm_seed1", "heldout")] == {"a": 2, "b": 2, "c": 4}
    d = meds_effect.contrast(counts, "arm", "base", [0, 1], "heldout", N, [1, 4])
    # pass@1: problem a gains 1/4 (seed 0) or 2/4 (seed 1), b and c nothing: mean 0.375 / 3
    assert d[1][0] == pytest.approx((0.25 + 0.5) / 2 / 3)
    assert d[4][0] == pytest.approx(1 / 3)  # a: 0 -> 1 at k = 4 in both seeds
    lo, hi = d[1][1]
    assert 0.0 <= lo < d[1][0] < hi <= 0.5 / 3 * 3  # the resamples range over seeds and problems
    same = meds_effect.contrast(counts, "base", "base", [0, 1], "heldout", N, [1, 2])
    assert same == {1: (0.0, (0.0, 0.0)), 2: (0.0, (0.0, 0.0))}


def test_report_tables_every_arm_and_contrast(tmp_path):
    seeds = {"dapo": [0, 1, 2, 3], "other": [0, 1]}
    runs, rows = {}, samples("sft", "heldout", {"a": 1, "b": 0}) + samples("sft", "train", {"t": 1})
    for arm in meds_effect.ARMS:
        for s in meds_effect._seeds_of(arm, seeds):
            scalars = {tag: {1: 0.1 * s, 2: 0.2 + s} for tag in meds_effect.CURVES}
            scalars |= {"train/groups/kept": {1: 8.0, 2: 8.0}, "train/groups/all_wrong_nonzero_adv": {1: 0.0, 2: 0.0}}
            if arm.startswith("dapo"):
                scalars["train/dynamic_filtering_pass_rate"] = {1: 400.0, 2: 800.0}  # 16 and 8 generated
            else:
                scalars["train/groups/all_wrong_nonzero_adv"] = {1: 3.0, 2: 5.0}
            runs[f"{arm}_seed{s}"] = {"scalars": scalars, "wall_s": 10.0}
            better = 1 if "meds" in arm else 0
            rows += samples(f"{arm}_seed{s}", "heldout", {"a": 1 + better, "b": better})
            rows += samples(f"{arm}_seed{s}", "train", {"t": 2})
    start = {"accuracy": 0.25, "mixed": 0.8, "repeated_error": 0.5, "distinct_first_token": True, "prompts": 16, "n": 8}
    args = argparse.Namespace(steps=2, n=N, dapo_seeds="0,1,2,3", other_seeds="0,1")
    table = meds_effect.report(
        str(tmp_path), runs, meds_effect.correct_counts(rows), seeds, start, args, wall={"eval": 1.0, "total": 2.0}
    )
    held = table["contrasts"]["heldout"]
    assert held["dapo_meds-dapo"]["1"][0] == pytest.approx(0.25)  # +1 of 4 on each of 2 problems
    assert held["grpo_meds-grpo"]["1"][1] == (pytest.approx(0.25), pytest.approx(0.25))  # every resample
    assert table["contrasts"]["train"]["dapo_meds_shaped-dapo"]["4"][0] == 0.0
    assert table["pass@k"]["heldout"]["DAPO"]["1"] == pytest.approx(0.125)
    md = (tmp_path / "results.md").read_text()
    assert "| DAPO + MEDS - DAPO | 0,1,2,3 | +25.0 [+25.0, +25.0] |" in md
    assert "| GRPO + MEDS - GRPO | 0,1 |" in md
    # 4 DAPO runs x 2 steps x 8 kept; generated 8 * 8 * 100 / rate = 16 and 8 a step
    assert "DAPO + MEDS            kept 64 of 96 generated (67%); all wrong among the kept: 0;" in md
    assert "rollouts of all-wrong groups with a non-zero advantage: 16" in md  # GRPO + MEDS: 2 runs x (3 + 5)
    assert json.load(open(tmp_path / "results.json"))["start"]["accuracy"] == 0.25
    assert (tmp_path / "meds_effect.png").read_bytes()[:4] == b"\x89PNG"
    assert np.isfinite(held["dapo_meds_shaped-dapo"]["2"][0])
