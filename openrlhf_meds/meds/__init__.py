"""The MEDS algorithm (no Ray, vLLM or OpenRLHF imports).

- `answer.py`: where a rollout's first answer token is; `features.py`: its per-layer logits
  (the feature vector); `semantic.py`: response-text embeddings instead.
- `memory.py`: `ErrorMemory`, the per-prompt memory (assign, append, re-cluster, stats);
  `memory_files.py`: its storage format and files (atomic saves, tails, loading).
- `clustering.py`: exact incremental HDBSCAN with the hdbscan package's labels, from
  `hdbscan_tree.py` (the spanning tree and the condensed tree) and `hdbscan_numbering.py`
  (how the package numbers clusters).
- `shaping.py`: penalties, shaped rewards, group advantages, the dynamic filter's rule.
- `config.py`: `MedsConfig`, the `--meds.*` flags and the per-model presets (`presets/`).
- `diversity.py`: a group's diversity metrics; `reference.py`: the official memory step,
  written plainly (the tests' yardstick).
"""

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
