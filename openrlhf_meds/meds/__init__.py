"""The MEDS algorithm (no Ray, vLLM or OpenRLHF imports): answer-token features, the
per-prompt error memory, clustering, penalties, configuration and per-model presets."""

from .config import MedsConfig, add_meds_args, config_from_args, list_presets, load_preset, resolve_config
from .memory import ErrorMemory
from .shaping import group_advantages, penalties, shape_rewards

__all__ = [
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
