"""MEDS configuration: every knob, its validation, per-model presets and `--meds.*` flags.

Precedence (lowest to highest): built-in defaults (the official MEDS run) < preset YAML
(`--meds.preset NAME|PATH`, or detected from the model path) < explicit `--meds.*` flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
from dataclasses import dataclass, fields
from typing import Any

import yaml

PRESET_DIR = os.path.join(os.path.dirname(__file__), "presets")

CHOICES = {
    "target": ("wrong", "right", "both", "none"),
    "assignment": ("knn_prev", "joint"),
    "noise": ("cluster", "zero"),
    "clustering": ("exact", "hdbscan", "random", "single"),
    "feature_source": ("vllm", "actor"),
}

# Group ids carry their shard in the low bits (see openrlhf_meds/memory/actor.py).
MAX_SHARDS = 1024


@dataclass
class MedsConfig:
    """All MEDS knobs. Defaults reproduce the official MEDS code (see docs/meds-spec.md)."""

    enable: bool = True
    # Penalty min(alpha * ln(|C| + 1), beta); the reference caps ln at 2.0, i.e. beta = 2 alpha.
    alpha: float = 0.1
    beta: float = 0.2
    # Feature: per-layer logits of the first answer token over the last `layers` layers
    # (an int, or "half" for the latter half of the model).
    layers: int | str = 14
    layer_diff: bool = False  # use diff(l) of the full per-layer vector before the window
    logit_lens: bool = False  # apply the final norm to every layer, not only the last
    # Which rollouts are penalized: wrong (reference) | right | both | none.
    target: str = "wrong"
    # knn_prev (reference): kNN vote against the previous clustering;
    # joint: cluster memory + new rollouts together, use the rollout's own cluster.
    assignment: str = "knn_prev"
    knn_k: int = 3
    # cluster (reference quirk): a vote for noise counts all stored noise points;
    # zero: noise points are unique, |C| = 0.
    noise: str = "cluster"
    # exact: HDBSCAN(min_cluster_size=2, min_samples=1) on an exact minimum spanning tree
    #   (equals the hdbscan package with approx_min_span_tree=False), incremental and fast;
    # hdbscan: call the hdbscan package exactly as the official code does (approximate
    #   spanning tree, slow; bit-for-bit reference);
    # random / single: the paper's ablations (a random stored vector's cluster; one
    #   cluster per key, i.e. count-based).
    clustering: str = "exact"
    # Keep at most this many vectors per key (0: unbounded, the reference); the oldest
    # vectors are evicted first.
    memory_bound: int = 0
    seed: int = 0  # for clustering=random
    # Where features come from: the patched vLLM engines (vllm) or the training-side
    # log-prob forward (actor), for engines where the vLLM patch is unavailable.
    feature_source: str = "vllm"
    # The memory service (openrlhf_meds/memory/actor.py): number of MemoryActor shards
    # (keys are spread by a stable hash of the prompt key), a recovery snapshot every
    # `snapshot_interval` steps (0: only with training checkpoints), and the directory
    # for recovery snapshots and the write-ahead log ("": a fresh temporary directory).
    memory_shards: int = 1
    # DAPO dynamic filtering drops groups whose raw scores are all equal; the reference
    # keeps them out of the memory too (false). true: they enter the memory (not shaped).
    filtered_into_memory: bool = False
    snapshot_interval: int = 10
    memory_dir: str = ""
    preset: str | None = None  # name or path of the preset these values came from

    def __post_init__(self):
        self.validate()

    def validate(self) -> "MedsConfig":
        """Raise ValueError naming the offending `--meds.*` flag."""

        def bad(name, msg):
            raise ValueError(f"--meds.{name}: {msg}")

        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                bad(name, f"{getattr(self, name)!r} is not one of {', '.join(choices)}")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v == v or v < 0:
                bad(name, f"must be a number >= 0, got {v!r}")
            if v == float("inf"):
                bad(name, "must be finite")
        if self.layers != "half" and (
            isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1
        ):
            bad("layers", f"must be a positive integer or 'half', got {self.layers!r}")
        if isinstance(self.knn_k, bool) or not isinstance(self.knn_k, int) or self.knn_k < 1:
            bad("knn_k", f"must be a positive integer, got {self.knn_k!r}")
        if (
            isinstance(self.memory_bound, bool)
            or not isinstance(self.memory_bound, int)
            or self.memory_bound < 0
            or self.memory_bound == 1
        ):
            bad("memory_bound", f"must be 0 (unbounded) or an integer >= 2, got {self.memory_bound!r}")
        if isinstance(self.memory_shards, bool) or not (isinstance(self.memory_shards, int) and 1 <= self.memory_shards <= MAX_SHARDS):
            bad("memory_shards", f"must be an integer in [1, {MAX_SHARDS}], got {self.memory_shards!r}")
        if isinstance(self.snapshot_interval, bool) or not isinstance(self.snapshot_interval, int) or self.snapshot_interval < 0:
            bad("snapshot_interval", f"must be an integer >= 0 (steps; 0 = only at checkpoints), got {self.snapshot_interval!r}")
        if not isinstance(self.memory_dir, str):
            bad("memory_dir", f"must be a path, got {self.memory_dir!r}")
        for name in ("enable", "layer_diff", "logit_lens", "filtered_into_memory"):
            if not isinstance(getattr(self, name), bool):
                bad(name, f"must be true or false, got {getattr(self, name)!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- presets


def list_presets() -> dict[str, str]:
    """Preset name -> YAML path, for the presets shipped with the package."""
    return {
        os.path.splitext(os.path.basename(p))[0]: p
        for p in sorted(glob.glob(os.path.join(PRESET_DIR, "*.yaml")))
    }


def load_preset(name_or_path: str) -> dict:
    """Load a preset by shipped name (case-insensitive) or by YAML path.

    Returns the MedsConfig values it sets (keys other than `match` and `notes`).
    """
    presets = list_presets()
    path = name_or_path if os.path.isfile(name_or_path) else presets.get(name_or_path.lower())
    if path is None:
        raise ValueError(
            f"--meds.preset: unknown preset {name_or_path!r}; shipped presets: "
            f"{', '.join(presets)} (or give a path to a YAML file)"
        )
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--meds.preset: {path} must hold a mapping")
    values = {k: v for k, v in data.items() if k not in ("match", "notes", "tuned")}
    known = {f.name for f in fields(MedsConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--meds.preset: {path} sets unknown keys {unknown}")
    return values


def preset_for_model(model_path: str | None) -> str | None:
    """Name of the shipped preset whose `match` patterns occur in the model path, if any."""
    if not model_path:
        return None
    name = os.path.basename(os.path.normpath(model_path)).lower()
    for preset, path in list_presets().items():
        with open(path) as f:
            patterns = (yaml.safe_load(f) or {}).get("match", [])
        if any(p.lower() == name or p.lower() in name for p in patterns):
            return preset
    return None


def resolve_config(
    overrides: dict[str, Any] | None = None, preset: str | None = None, model_path: str | None = None
) -> MedsConfig:
    """Defaults < preset (explicit, else detected from `model_path`) < explicit overrides."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    preset = overrides.pop("preset", None) or preset or preset_for_model(model_path)
    values: dict[str, Any] = {}
    if preset:
        values.update(load_preset(preset))
        values["preset"] = preset
    values.update(overrides)
    return MedsConfig(**values)


# ---------------------------------------------------------------- command line


def _bool(text: str) -> bool:
    t = str(text).lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _layers(text: str) -> int | str:
    if text == "half":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'half', got {text!r}")


_ARG_TYPES = {bool: _bool, float: float, int: int}


def add_meds_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--meds.<field>` for every MedsConfig field (default None = not given)."""
    group = parser.add_argument_group("MEDS reward shaping")
    defaults = MedsConfig()
    for f in fields(MedsConfig):
        default = getattr(defaults, f.name)
        kind = {"layers": _layers}.get(f.name) or _ARG_TYPES.get(type(default), str)
        kwargs: dict[str, Any] = dict(type=kind, default=None, help=f"(default: {default})")
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        if kind is _bool:
            kwargs["nargs"] = "?"
            kwargs["const"] = True
        group.add_argument(f"--meds.{f.name}", dest=f"meds.{f.name}", **kwargs)
    return parser


def config_from_args(args: argparse.Namespace, model_path: str | None = None) -> MedsConfig:
    """Build the MedsConfig from parsed `--meds.*` flags (explicit flags beat the preset)."""
    given = {k[len("meds."):]: v for k, v in vars(args).items() if k.startswith("meds.")}
    return resolve_config(given, model_path=model_path)
