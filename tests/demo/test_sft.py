"""The demo's SFT'd model fits MEDS's premise on the demo task (`sft.measure_start`)."""

import pytest

from openrlhf_meds.demo import task as arith
from openrlhf_meds.demo.sft import measure_start


@pytest.mark.slow  # the session's SFT'd model (minutes, once)
def test_the_sft_model_fits_the_premise_of_meds(sft_model, tmp_path):
    """Measured on 32 training problems x 8 rollouts: roughly a fifth to a half of the rollouts
    right (the demo prints 24%; the bound allows sampling noise down to 15%), most groups of 8
    mixed (what a dynamic filter keeps), a commonest wrong answer taking >= 30% of a problem's
    wrong rollouts, and one first answer token per answer."""
    train = arith.write_split(str(tmp_path), 32, 0)["train"]
    start = measure_start(sft_model["sft_model"], train, n=8, seed=0)
    assert (start["prompts"], start["n"]) == (32, 8)
    assert 0.15 <= start["accuracy"] <= 0.5, start
    assert start["mixed"] >= 0.5, start
    assert start["repeated_error"] >= 0.3, start
    assert start["distinct_first_token"] is True
