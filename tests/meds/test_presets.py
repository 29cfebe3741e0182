"""The shipped presets hold the official runs' MEDS values (the values found in
the history of the official repository), the cap tied to alpha where the official one is 2 x alpha,
and each is detected from its own model's path."""

import pytest
import yaml

from openrlhf_meds.meds import list_presets, load_preset, resolve_config
from openrlhf_meds.meds.config import preset_for_model

# model -> (preset, official alpha); the official cap is 2 x alpha for every one of them
OFFICIAL = {
    "Qwen2.5-Math-7B": ("qwen2.5-math-7b", 0.1),
    "Qwen3-1.7B": ("qwen3-1.7b", 0.1),
    "Qwen3-4B-Base": ("qwen3-4b-base", 0.1),
    "Qwen3-8B": ("qwen3-8b", 0.01),
}


@pytest.mark.parametrize("model", sorted(OFFICIAL))
def test_preset_has_the_official_alpha_and_tied_cap(model):
    name, alpha = OFFICIAL[model]
    values = load_preset(name)
    assert values["alpha"] == alpha
    assert "beta" not in values  # the cap follows alpha (2 x alpha), as the official code's
    config = resolve_config(preset=name)
    assert (config.alpha, config.beta, config.layers, config.target) == (alpha, pytest.approx(2 * alpha), 14, "wrong")
    assert yaml.safe_load(open(list_presets()[name]))["tuned"] is True


@pytest.mark.parametrize("model", sorted(OFFICIAL))
def test_preset_is_detected_from_the_model_path(model):
    assert preset_for_model(f"/models/{model}") == OFFICIAL[model][0]
    assert resolve_config(model_path=f"/models/{model}").alpha == OFFICIAL[model][1]


def test_qwen3_8b_base_keeps_its_own_preset():
    """ "qwen3-8b" is part of "qwen3-8b-base": the base model still gets its own preset."""
    assert preset_for_model("/models/Qwen3-8B-Base") == "qwen3-8b-base"
    assert resolve_config(model_path="/models/Qwen3-8B-Base").alpha == 0.1


def test_no_shipped_preset_sets_a_cap_equal_to_twice_alpha():
    """A beta equal to 2 x alpha in a file would stop following a changed --meds.alpha."""
    for name in list_presets():
        values = load_preset(name)
        if "beta" in values:
            assert values["beta"] != pytest.approx(2 * values["alpha"]), name
    assert resolve_config({"alpha": 0.05}, preset="qwen3-8b").beta == pytest.approx(0.1)
