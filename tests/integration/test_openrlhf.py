"""The one module that lists what MEDS changes in OpenRLHF: every replaced name exists in
OpenRLHF, has a row in patches/README.md, and is the only thing `replacements` replaces."""

import os
import re

import pytest

from openrlhf_meds.integration import openrlhf
from openrlhf_meds.meds import MedsConfig

README = os.path.join(os.path.dirname(__file__), "..", "..", "patches", "README.md")


@pytest.mark.parametrize("name", sorted(openrlhf.REPLACED))
def test_every_replaced_name_exists_and_has_a_readme_row(name):
    import importlib

    module, _, attr = name.rpartition(".")
    assert hasattr(importlib.import_module(module), attr)
    assert f"`{name}`" in open(README).read()


TRAINERS = (openrlhf.PPO_TRAINER, openrlhf.PPO_TRAINER_ASYNC)  # train() picks one by --train.async_enable


@pytest.mark.parametrize(
    "config, expected",
    [
        (MedsConfig(enable=False, diversity=False), set()),  # plain OpenRLHF
        # The baseline with train/div/*: MEDS's engines and trainer, no memory, rewards untouched.
        (MedsConfig(enable=False), set(TRAINERS)),
        (MedsConfig(), set(TRAINERS)),
        (MedsConfig(feature_source="actor"), {*TRAINERS, openrlhf.POLICY_ACTOR}),
    ],
)
def test_replacements_replace_only_listed_names(config, expected):
    # every run gets the same checks, eval metrics and engines at full batch (MEDS's engines
    # for the vllm feature source)
    always = {openrlhf.HIERARCHIZE, openrlhf.EVAL_METRICS, openrlhf.ROLLOUT_ACTOR}
    replace = openrlhf.replacements(config)
    assert set(replace) == always | expected
    meds_engines = (config.enable or config.diversity) and config.feature_source == "vllm"
    assert (replace[openrlhf.ROLLOUT_ACTOR].config is not None) == meds_engines


def test_replaced_restores_the_originals():
    from openrlhf.utils import config as openrlhf_config

    original = openrlhf_config.hierarchize
    with openrlhf.replaced({openrlhf.HIERARCHIZE: len}):
        assert openrlhf_config.hierarchize is len
    assert openrlhf_config.hierarchize is original
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        with openrlhf.replaced({"openrlhf.utils.config.nope": len}):
            pass


def test_training_eval_logs_unbiased_pass_at_k_from_raw_scores():
    """OpenRLHF's evaluate() looks compute_eval_metrics up by name; ours adds pass@k from the
    raw scores (the rewards below are shaped-looking on purpose and must not be used)."""
    import inspect
    from fractions import Fraction
    from math import comb

    import torch
    from openrlhf.trainer import ppo_trainer
    from openrlhf.trainer.ppo_utils.experience import Experience

    from openrlhf_meds.integration.eval_metrics import with_pass_at_k

    assert "logs = compute_eval_metrics(self.eval_dataloader, samples_list" in inspect.getsource(ppo_trainer)
    n = 4
    verdicts = {"p1": [1, 0, 0, 0], "p2": [0, 0, 0, 0], "q1": [1, 1, 0, 1]}
    loader = [(["aime", "aime"], ["p1", "p2"], ["1", "2"], [None, None]), (["amc"], ["q1"], ["3"], [None])]
    samples = [
        Experience(prompts=[p], scores=torch.tensor([float(v)]), rewards=torch.tensor([v - 0.3]))
        for p, vs in verdicts.items()
        for v in vs
    ]
    logs = with_pass_at_k(ppo_trainer.compute_eval_metrics)(loader, samples, n)
    for k in (1, 2, 4):
        aime = [1 - Fraction(comb(n - c, k), comb(n, k)) for c in (1, 0)]
        assert logs[f"eval_aime_pass@{k}"] == pytest.approx(float(sum(aime) / 2))
        assert logs[f"eval_amc_pass@{k}"] == pytest.approx(float(1 - Fraction(comb(1, k), comb(4, k))))
    assert logs["eval_aime_mean@4"] == pytest.approx(1 / 8)
    assert "eval_aime_pass1" in logs  # OpenRLHF's own metrics stay


def test_openrlhf_flags_meds_needs_are_checked_with_the_flag_named():
    import argparse

    from openrlhf_meds.integration.openrlhf import check_openrlhf_args

    good = {"reward.remote_url": "reward.py", "vllm.num_engines": 1, "eval.dataset": "aime24.jsonl"}

    def check(config, **changes):
        check_openrlhf_args(argparse.Namespace(**{**good, **changes}), config)

    check(MedsConfig(eval_before_training=True))
    check(MedsConfig(), **{"train.async_enable": True})  # async with MEDS: integration/async_trainer.py
    check(MedsConfig(), **{"train.async_enable": True, "train.async_queue_size": 3})  # 4 steps ahead at most
    check(MedsConfig(feature_source="actor"), **{"train.partial_rollout_enable": True})  # features after the rollout
    shaped = {"algo.dynamic_filtering_enable": True, "algo.dynamic_filtering_range": [0.0, 1.0]}
    check(MedsConfig(filter_metric="shaped"), **shaped)
    check(MedsConfig(filter_metric="shaped"), **shaped, **{"train.async_enable": True})  # the generator filters
    cases = [
        (MedsConfig(), {"reward.remote_url": None}, "pass --reward.remote_url"),
        (MedsConfig(enable=False), {"reward.remote_url": None}, "or --meds.diversity false"),
        (MedsConfig(eval_before_training=True), {"train.async_enable": True}, "not supported with --train.async"),
        (MedsConfig(), {"train.partial_rollout_enable": True}, "--train.partial_rollout_enable syncs weights"),
        (MedsConfig(), {"train.async_enable": True, "train.async_queue_size": 4}, "4 steps: lower them so"),
        (
            MedsConfig(),
            {"train.async_enable": True, "rollout.vllm_generate_batch_size": 12, "rollout.batch_size": 4},
            "lets the generator run 6 steps ahead",
        ),
        (MedsConfig(), {"vllm.num_engines": 0}, "--vllm.num_engines >= 1"),
        (MedsConfig(eval_before_training=True), {"eval.dataset": None}, "--meds.eval_before_training needs"),
        (MedsConfig(filter_metric="shaped"), {}, "pass --algo.dynamic_filtering_enable"),
        (
            MedsConfig(filter_metric="shaped"),
            {"algo.dynamic_filtering_enable": True, "algo.dynamic_filtering_range": [0.05, 0.95]},
            "--algo.dynamic_filtering_range is not used by --meds.filter_metric shaped",
        ),
    ]
    for config, changes, message in cases:
        with pytest.raises(SystemExit, match=re.escape(message)):
            check(config, **changes)
    check(MedsConfig(enable=False, diversity=False), **{"reward.remote_url": None, "vllm.num_engines": 0})
    with pytest.raises(ValueError, match="--meds.eval_before_training needs MEDS's trainer"):
        MedsConfig(enable=False, diversity=False, eval_before_training=True)
