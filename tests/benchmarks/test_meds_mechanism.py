"""benchmarks/meds_mechanism.py: with alpha = 0 each MEDS arm is its baseline bit for bit, the
raw-score filter keeps every all-wrong group out of the memory and the training, and the
script prints its tables (a few seeds and steps; the study itself: docs/meds-effect.md)."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from openrlhf_meds.meds import ErrorMemory, MedsConfig

spec = importlib.util.spec_from_file_location(
    "meds_mechanism", os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "meds_mechanism.py")
)
mm = importlib.util.module_from_spec(spec)
sys.modules["meds_mechanism"] = mm  # its dataclass looks its module up there
spec.loader.exec_module(mm)


@pytest.mark.parametrize("meds, baseline", [("GRPO+MEDS", "GRPO"), ("DAPO+MEDS", "DAPO")])
def test_alpha_zero_is_the_baseline_bit_for_bit(meds, baseline):
    s = mm.Setting(alpha=0.0, lr=1.0)  # a large step: trajectories that differ would show it
    a, b = mm.run(meds, s, 6, 2, 12), mm.run(baseline, s, 6, 2, 12)
    assert np.array_equal(a["theta"], b["theta"])
    for key in ("pass@1", "pass@16", "error_entropy"):
        assert np.array_equal(a[key], b[key])
    # ... and with alpha > 0 the same seeds give another trajectory.
    assert not np.array_equal(mm.run(meds, mm.Setting(alpha=0.2, lr=1.0), 6, 2, 12)["theta"], b["theta"])


def test_the_raw_filter_gives_no_all_wrong_group_an_advantage():
    s = mm.Setting(alpha=0.2)
    rng = np.random.default_rng(0)
    right = np.arange(s.answers) < s.right
    vectors = rng.normal(size=(s.answers, s.dim))
    # Group 0 all wrong (the dominant error 6 times, two others once), group 1 mixed; before
    # them, a step where each prompt's errors formed clusters of 4, 2 and 2.
    past = np.array([[1, 1, 1, 1, 2, 2, 3, 3], [0, 1, 1, 1, 1, 2, 2, 3]])
    answers = np.array([[1, 1, 1, 1, 1, 1, 2, 3], [0, 1, 1, 1, 2, 1, 1, 4]])

    def feats(a):
        return vectors[a] + s.noise * rng.normal(size=(*a.shape, s.dim))

    for dynamic_filter in (False, True):
        memory = ErrorMemory(MedsConfig(alpha=s.alpha))
        mm.step_advantages(past, right, feats(past), memory, False)
        adv, pens = mm.step_advantages(answers, right, feats(answers), memory, dynamic_filter)
        if dynamic_filter:  # dropped before the memory: no penalty, no advantage, not stored
            assert (adv[0] == 0).all() and (pens[0] == 0).all() and len(memory.keys[(0, False)].vectors) == 8
        else:  # GRPO + MEDS: the repeated error is penalized more, the group trains
            assert pens[0, 0] > pens[0, 6] and adv[0, 0] < 0 < adv[0, 6]
        assert (pens[1, 1:] > 0).any() and adv[1, 0] > 0  # the mixed group: shaped either way
    # Over whole runs: DAPO + MEDS never trains on an all-wrong group, GRPO + MEDS does.
    assert (mm.run("DAPO+MEDS", s, 10, 2, 6)["all_wrong_trained"] == 0).all()
    assert mm.run("GRPO+MEDS", s, 10, 2, 6)["all_wrong_trained"].max() > 0.5


def test_policy_gradient_is_the_exact_gradient_on_the_logits():
    rng = np.random.default_rng(1)
    theta, answers, adv = rng.normal(size=(1, 5)), np.array([[0, 2, 2, 4]]), rng.normal(size=(1, 4))

    def objective(t):
        return (adv * np.log(mm.softmax(t))[0, answers[0]]).mean()

    numeric = np.array([(objective(theta + h) - objective(theta - h)) / 2e-6 for h in np.eye(5)[:, None, :] * 1e-6])
    np.testing.assert_allclose(mm.policy_gradient(mm.softmax(theta), answers, adv)[0], numeric, rtol=1e-5, atol=1e-8)


def test_the_script_prints_its_tables(capsys):
    mm.main(["--seeds", "4", "--steps", "4"])
    out = capsys.readouterr().out
    assert "| GRPO+MEDS | 4 |" in out and "| DAPO+MEDS - DAPO | 4 |" in out
    assert out.count("| 0.05 | 0.2 | collapsed |") == 1 and "| 0.3 | 0.05 | separable |" in out
