"""The MEDS algorithm (no Ray, vLLM or OpenRLHF imports): answer-token features, the
per-prompt error memory, clustering, penalties, configuration and per-model presets."""

from .answer import answer_target
from .config import MedsConfig, add_meds_args, config_from_args, list_presets, load_preset, resolve_config
from .memory import ErrorMemory
from .shaping import filter_keeps, group_advantages, penalties, shape_rewards

_FEATURES = ("feature_width", "layer_logit_features", "response_features")


def __getattr__(name: str):
    # The feature extractors need torch; a memory shard (which imports this package) does not,
    # so they are imported on first use: ~190 MiB less per shard process.
    if name in _FEATURES:
        from . import features

        return getattr(features, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "answer_target",
    "layer_logit_features",
    "response_features",
    "feature_width",
    "MedsConfig",
    "add_meds_args",
    "config_from_args",
    "list_presets",
    "load_preset",
    "resolve_config",
    "ErrorMemory",
    "penalties",
    "shape_rewards",
    "group_advantages",
    "filter_keeps",
]
