"""The MEDS algorithm (no Ray, vLLM or OpenRLHF imports): answer-token features, the
per-prompt error memory, clustering, penalties, configuration and per-model presets."""

from .answer import answer_target
from .config import MedsConfig, add_meds_args, config_from_args, list_presets, load_preset, resolve_config
from .features import feature_width, layer_logit_features, response_features
from .memory import ErrorMemory
from .shaping import group_advantages, penalties, shape_rewards

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
]
