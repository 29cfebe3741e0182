"""The demo's summary and picture from a run's scalars (the runs themselves: tests/test_e2e.py)."""

from openrlhf_meds.demo.main import CURVES, DIVERSITY, diversity_lines, plot


def test_diversity_lines_show_first_and_last_step_side_by_side():
    meds = {tag: {1: 0.5, 2: 0.25, 3: 0.75} for tag in DIVERSITY}
    baseline = {tag: {1: 0.5, 3: 0.125} for tag in DIVERSITY}
    lines = diversity_lines(meds, baseline)
    assert lines[0].endswith("MEDS | baseline")
    assert len(lines) == 1 + len(DIVERSITY)
    assert lines[1].endswith("0.500 -> 0.750 | 0.500 -> 0.125")
    assert diversity_lines(meds, None)[2].endswith("0.500 -> 0.750")
    assert diversity_lines({}, None)[1].endswith("n/a")


def test_plot_writes_a_png_with_every_curve(tmp_path):
    run = {tag: {1: 0.1, 2: 0.2} for tag in CURVES}
    path = tmp_path / "curves.png"
    plot(run, str(path), baseline={"train/div/distinct_answers": {1: 0.3, 2: 0.4}})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(CURVES) == 9  # a 3 x 3 grid
