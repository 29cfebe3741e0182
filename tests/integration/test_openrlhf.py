"""The one module that lists what MEDS changes in OpenRLHF: every replaced name exists in
OpenRLHF, has a row in patches/README.md, and is the only thing `replacements` replaces."""

import os

import pytest

from openrlhf_meds.cpu import patches

patches.install()  # CPU machine: flash-attn fallback module, torch.cuda no-ops

from openrlhf_meds.integration import openrlhf  # noqa: E402
from openrlhf_meds.meds import MedsConfig  # noqa: E402

README = os.path.join(os.path.dirname(__file__), "..", "..", "patches", "README.md")


@pytest.mark.parametrize("name", sorted(openrlhf.REPLACED))
def test_every_replaced_name_exists_and_has_a_readme_row(name):
    import importlib

    module, _, attr = name.rpartition(".")
    assert hasattr(importlib.import_module(module), attr)
    assert f"`{name}`" in open(README).read()


@pytest.mark.parametrize(
    "config, expected",
    [
        (MedsConfig(enable=False), {openrlhf.HIERARCHIZE}),
        (MedsConfig(), {openrlhf.HIERARCHIZE, openrlhf.PPO_TRAINER, openrlhf.ROLLOUT_ACTOR}),
        (MedsConfig(feature_source="actor"), {openrlhf.HIERARCHIZE, openrlhf.PPO_TRAINER, openrlhf.POLICY_ACTOR}),
    ],
)
def test_replacements_replace_only_listed_names(config, expected):
    assert set(openrlhf.replacements(config)) == expected


def test_replaced_restores_the_originals():
    from openrlhf.utils import config as openrlhf_config

    original = openrlhf_config.hierarchize
    with openrlhf.replaced({openrlhf.HIERARCHIZE: len}):
        assert openrlhf_config.hierarchize is len
    assert openrlhf_config.hierarchize is original
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        with openrlhf.replaced({"openrlhf.utils.config.nope": len}):
            pass


def test_version_mismatch_names_the_package():
    openrlhf.check_versions()  # the installed versions are the ones the replacements were read in
    with pytest.raises(RuntimeError, match=r"openrlhf==9\.9 \(found 0\.11\.2\)"):
        openrlhf.check_versions({"openrlhf": "9.9"})
