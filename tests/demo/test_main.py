"""The demo's summary and picture from a run's scalars (the runs themselves: tests/test_e2e.py)."""

import sys

import pytest

from openrlhf_meds.demo.main import (
    CURVES,
    DIVERSITY,
    HELD_OUT_TAG,
    diversity_lines,
    filter_lines,
    heldout_lines,
    main,
    plot,
    step_time_lines,
    train_side_by_side,
)


def test_diversity_lines_show_first_and_last_step_side_by_side():
    meds = {tag: {1: 0.5, 2: 0.25, 3: 0.75} for tag in DIVERSITY}
    baseline = {tag: {1: 0.5, 3: 0.125} for tag in DIVERSITY}
    lines = diversity_lines(meds, baseline)
    assert lines[0].endswith("MEDS | baseline")
    assert len(lines) == 1 + len(DIVERSITY)
    assert lines[1].endswith("0.500 -> 0.750 | 0.500 -> 0.125")
    assert diversity_lines(meds, None)[2].endswith("0.500 -> 0.750")
    assert diversity_lines({}, None)[1].endswith("n/a")


def evaluated(values: dict[int, tuple[float, float]]) -> dict:
    """Scalars of a run evaluated at step 0 and step 5: {k: (pass@k at 0, pass@k at 5)}."""
    return {HELD_OUT_TAG.format(k): {0: first, 5: last} for k, (first, last) in values.items()}


def test_heldout_lines_put_the_sft_model_and_both_last_steps_side_by_side():
    meds = evaluated({1: (0.125, 0.25), 2: (0.2, 0.375)})
    baseline = {HELD_OUT_TAG.format(k): {5: v} for k, v in ((1, 0.0625), (2, 0.1))}
    lines = heldout_lines(meds, baseline)
    assert lines[0].endswith("SFT'd | MEDS | baseline")
    assert lines[1].split()[0] == "pass@1" and lines[1].endswith("0.125 | 0.250 | 0.062")
    assert lines[2].split()[0] == "pass@2" and lines[2].endswith("0.200 | 0.375 | 0.100")
    assert heldout_lines(meds, None)[1].endswith("0.125 | 0.250")
    assert heldout_lines({}, None)[1:] == []  # no evaluation logged: no rows


@pytest.mark.parametrize("with_baseline", [True, False])
def test_plot_writes_a_png_with_every_curve(tmp_path, with_baseline):
    run = {tag: {1: 0.1, 2: 0.2} for tag in CURVES} | evaluated({1: (0.1, 0.2), 4: (0.3, 0.5)})
    path = tmp_path / "curves.png"
    baseline = {"train/div/distinct_answers": {1: 0.3, 2: 0.4}} | evaluated({1: (0.1, 0.1)})
    plot(run, str(path), baseline=baseline if with_baseline else None)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(CURVES) == 8  # a 3 x 3 grid, the last panel held-out pass@k


def test_step_time_lines_compare_the_runs_over_steps_2_on():
    meds = {"train/timing/step_total": {1: 40.0, 2: 21.0, 3: 19.0, 4: 20.0}}
    baseline = {"train/timing/step_total": {1: 30.0, 2: 20.0, 3: 20.0, 4: 20.0}}
    (line,) = step_time_lines(meds, baseline)
    # step 1 (vLLM's warm-up) left out: 20.00 s both; steps' pairs +5.0% and -5.0%
    assert line.startswith("mean step time (steps 2-4): 20.00 s with MEDS, 20.00 s without")
    assert line.endswith("MEDS adds +0.0% (one step's pair: -5.0% to +5.0%)")
    assert step_time_lines(meds, None) == ["mean step time (steps 2-4): 20.00 s with MEDS"]
    assert step_time_lines({"train/timing/step_total": {1: 9.0}}, None)[0].endswith("(steps 1-1): 9.00 s with MEDS")
    assert step_time_lines({}, None) == []


# A stand-in for train_grpo under $OPENRLHF_MEDS_TURNS: two steps, each printed as OpenRLHF
# logs them; argv[1] "die" exits before its first turn. A run that waits 30 s is killed by
# its alarm (the test then fails naming it, instead of hanging).
FAKE_RUN = """
import signal, sys
from openrlhf_meds.demo.turns import Turns
signal.alarm(30)
turns = Turns.from_env()
if sys.argv[1] == "die":
    sys.exit(3)
turns.start()
for step in (1, 2):
    print(f"Global step {step}: {{'timing/step_total': {step}.5}}", flush=True)
    turns.hand_over()
    turns.wait()
turns.finish()
"""


def test_side_by_side_runs_take_turns(tmp_path, capsys):
    runs = {name: (str(tmp_path / name), ["live"]) for name in ("a", "b")}
    assert train_side_by_side(runs, 2, program=(sys.executable, "-c", FAKE_RUN)) == {"a": {}, "b": {}}
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert lines == [f"{name}: step {s}/2 done, {s}.5 s" for name, s in (("a", 1), ("b", 1), ("b", 2), ("a", 2))]
    assert "Global step 2" in (tmp_path / "b" / "train.log").read_text()


def test_a_dead_run_fails_the_demo_but_does_not_block_the_other(tmp_path, capsys):
    runs = {"a": (str(tmp_path / "a"), ["live"]), "b": (str(tmp_path / "b"), ["die"])}
    with pytest.raises(SystemExit, match=r"the b run failed \(exit code 3\); its output: .*b/train.log"):
        train_side_by_side(runs, 2, program=(sys.executable, "-c", FAKE_RUN))
    assert "a: step 2/2 done, 2.5 s" in capsys.readouterr().out  # run a took all its turns


def test_filter_lines_count_the_kept_groups_and_the_all_wrong_ones_that_moved():
    dapo = {
        "train/groups/kept": {1: 8.0, 2: 6.0},
        "train/groups/all_wrong": {1: 0.0, 2: 0.0},
        "train/groups/all_wrong_nonzero_adv": {1: 0.0, 2: 0.0},
        # OpenRLHF's pass rate counts kept rollouts (8 a group) per prompt: 8 of 10, 6 of 8
        "train/dynamic_filtering_pass_rate": {1: 640.0, 2: 600.0},
    }
    grpo = {"train/groups/kept": {1: 8.0}, "train/groups/all_wrong": {1: 3.0}}
    grpo["train/groups/all_wrong_nonzero_adv"] = {1: 13.0}
    title, a, b = filter_lines({"DAPO + MEDS": dapo, "GRPO + MEDS": grpo})
    assert title == "groups (all steps)"
    assert "kept 14 of 18 generated (78%); all wrong among the kept: 0;" in a and a.endswith("advantage: 0")
    assert "kept 8 of 8 generated (100%); all wrong among the kept: 3;" in b and b.endswith("advantage: 13")


@pytest.mark.parametrize("argv", [["--steps", "3"], ["--steps", "0"], ["--pair", "ppo"]])
def test_bad_demo_flags_are_refused_before_any_work(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--work-dir", str(tmp_path / "demo")])
    assert e.value.code == 2 and not (tmp_path / "demo").exists()
    assert "--steps must be a multiple of 2" in capsys.readouterr().err or argv[0] == "--pair"
