"""MEDS configuration: every knob, its validation, per-model presets and `--meds.*` flags.

Each knob is one `MedsConfig` field whose metadata holds a `Knob`: what it does and which
values it takes. That one entry gives the flag's argparse help (`add_meds_args`) and the
check of its value (`MedsConfig.validate`); `CONFLICTS` lists the combinations refused
because a value would have no effect. docs/configuration.md describes the same table.

Precedence (lowest to highest): built-in defaults (the official MEDS run) < preset YAML
(`--meds.preset NAME|PATH`, or detected from the model path) < explicit `--meds.*` flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

PRESET_DIR = os.path.join(os.path.dirname(__file__), "presets")

# Group ids carry their shard in the low bits (openrlhf_meds/memory/routing.py).
MAX_SHARDS = 1024

TARGETS = ("wrong", "right", "both", "none")
ASSIGNMENTS = ("knn_prev", "joint")
NOISE = ("cluster", "zero")
CLUSTERINGS = ("exact", "hdbscan", "random", "single")
FEATURE_SOURCES = ("vllm", "actor")
FEATURE_DTYPES = ("bf16", "float32")
FEATURE_KINDS = ("logits", "semantic")
MEMORY_PLACEMENTS = ("driver", "spread")
FILTER_METRICS = ("raw", "shaped")


@dataclass(frozen=True)
class Knob:
    """One `--meds.<name>` flag: what it does and the values it takes.

    kind: "bool", "number" (a finite float >= lo), "int" (an integer >= lo, <= hi if given,
    or 0 when `zero` names what 0 means, or one of `words`), "choice" (one of `choices`),
    "path" (a directory path), "model" (a local model directory or a Hugging Face hub name) or
    "preset" (a shipped preset name or a YAML path).
    """

    what: str
    kind: str
    lo: float | None = None
    hi: int | None = None
    zero: str | None = None
    words: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    default_text: str | None = None  # how the help shows the default, where str() says too little

    def range_text(self) -> str:
        """The accepted values, as the help and the error messages say them."""
        if self.kind == "bool":
            return "true or false (the bare flag means true)"
        if self.kind == "number":
            return f"a number >= {self.lo:g} and finite"
        if self.kind == "choice":
            return "one of " + "|".join(self.choices)
        if self.kind == "path":
            return "a directory path"
        if self.kind == "model":
            return "a local model directory or a Hugging Face hub name"
        if self.kind == "preset":
            return f"a shipped preset ({', '.join(list_presets())}) or the path of a YAML file"
        if self.hi is not None:
            text = f"an integer in [{self.lo}, {self.hi}]"
        elif self.lo == 1:
            text = "a positive integer"
        else:
            text = f"an integer >= {self.lo}"
        if self.zero:
            text = f"0 ({self.zero}) or {text}"
        return " or ".join([text, *(repr(w) for w in self.words)])

    def accepts(self, value: Any) -> bool:
        """Whether `value` is one this knob takes (as Python, after parsing)."""
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return value in self.choices
        if self.kind in ("path", "model"):
            return isinstance(value, str)
        if self.kind == "preset":
            return value is None or (isinstance(value, str) and value != "")
        if isinstance(value, bool):
            return False
        if self.kind == "number":
            return isinstance(value, (int, float)) and math.isfinite(value) and value >= self.lo
        if value in self.words:
            return True
        if not isinstance(value, int):
            return False
        return (self.zero is not None and value == 0) or (value >= self.lo and (self.hi is None or value <= self.hi))

    def parse(self, text: str) -> Any:
        """argparse `type=`: the flag's text as the Python value (range checked later)."""
        if self.kind == "bool":
            t = text.lower()
            if t in ("1", "true", "yes", "on"):
                return True
            if t in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        if self.kind == "number":
            try:
                return float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {self.range_text()}, got {text!r}") from None
        if self.kind == "int":
            if text in self.words:
                return text
            try:
                return int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {self.range_text()}, got {text!r}") from None
        return text


def _knob(default: Any, what: str, kind: str, **spec: Any):
    return field(default=default, metadata={"knob": Knob(what, kind, **spec)})


@dataclass(frozen=True)
class Conflict:
    """A refused combination: `--meds.<knob>` has no effect while `--meds.<other>` is one of
    `other_values`. With `knob_values`, refused whenever the knob has one of those values;
    without, only when the knob is given explicitly (a flag or an override, not a default
    or a preset value)."""

    knob: str
    other: str
    other_values: tuple
    why: str
    knob_values: tuple | None = None


@dataclass
class MedsConfig:
    """All MEDS knobs. Defaults reproduce the official MEDS code (see docs/algorithm.md).

    `beta=None` (the default) becomes `2 * alpha` when the config is built, so a config
    never holds None; `resolve_config` builds it once defaults, preset and flags are merged.
    """

    enable: bool = _knob(
        True,
        "MEDS on; false runs the GRPO baseline through the same entry point: no memory, rewards untouched "
        "(the other --meds.* flags are then accepted and unused, so a recipe's flags work for both); "
        "with --meds.diversity true the baseline still computes features, for train/div/* only",
        "bool",
    )
    alpha: float = _knob(
        0.1,
        "penalty slope: a rollout in a past-error cluster of size |C| loses min(alpha*ln(|C|+1), beta) of "
        "its reward before GRPO's group normalisation (with --meds.target right|both, a correct rollout's "
        "reward r becomes r/(1+penalty))",
        "number",
        lo=0,
    )
    beta: float | None = _knob(
        None,
        "penalty cap: the largest penalty; the default follows alpha as the official code does (it caps "
        "ln(|C|+1) at 2.0), a value from this flag or a preset replaces it",
        "number",
        lo=0,
        default_text="2 x alpha",
    )
    layers: int | str = _knob(
        14,
        "feature width: the per-layer logits of the first answer token over the last N decoder layers, "
        "or half: the latter half of the model's layers",
        "int",
        lo=1,
        words=("half",),
    )
    layer_diff: bool = _knob(
        False,
        "feature: the differences between consecutive layers' logits (taken over all layers, before the last-N window)",
        "bool",
    )
    logit_lens: bool = _knob(
        False,
        "feature: apply the final norm to every layer's hidden state (the reference norms only the last layer)",
        "bool",
    )
    feature_dtype: str = _knob(
        "bf16",
        "precision of each per-layer logit of the feature: bf16 (the official code's lm_head under bf16 "
        "autocast): rounded to bfloat16, then stored as float32; float32: the float32 dot product as it is",
        "choice",
        choices=FEATURE_DTYPES,
    )
    features: str = _knob(
        "logits",
        "what a rollout's feature is: logits (the reference): its per-layer answer-token logits; semantic "
        "(the paper's ablation): the mean-pooled, L2-normalised last hidden state of the response text "
        "under the encoder --meds.embedding_model (rollouts without a \\boxed{} answer still get none)",
        "choice",
        choices=FEATURE_KINDS,
    )
    embedding_model: str = _knob(
        "",
        "the Hugging Face encoder (AutoModel + AutoTokenizer) of --meds.features semantic; required there",
        "model",
        default_text="none",
    )
    target: str = _knob(
        "wrong",
        "which rollouts are penalized: wrong (the reference), right, both, or none (features are "
        "stored, nothing is penalized); each prompt keeps separate memories of its wrong and right rollouts",
        "choice",
        choices=TARGETS,
    )
    assignment: str = _knob(
        "knn_prev",
        "how a new rollout finds its cluster: knn_prev (the reference): the vote of its --meds.knn_k "
        "nearest stored rollouts (cosine) on the previous clustering's labels; joint (the paper's "
        "prose): cluster the memory and the new rollouts together and take the rollout's own "
        "cluster, whose size counts the new rollouts too",
        "choice",
        choices=ASSIGNMENTS,
    )
    knn_k: int = _knob(3, "neighbours in the knn_prev vote (a tie goes to the smallest label)", "int", lo=1)
    noise: str = _knob(
        "cluster",
        "a vote for HDBSCAN noise: cluster (the reference's quirk): |C| counts all stored noise "
        "points; zero: a noise point is unique, |C| = 0 (no penalty)",
        "choice",
        choices=NOISE,
    )
    clustering: str = _knob(
        "exact",
        "exact: HDBSCAN(min_cluster_size=2, min_samples=1) on an exact minimum spanning tree, "
        "incremental (the package with approx_min_span_tree=False); hdbscan: the hdbscan package "
        "called as the official code calls it (approximate spanning tree, slow, bit-for-bit "
        "reference); random: the cluster of a random stored rollout (the paper's ablation); "
        "single: one cluster per prompt, |C| = its stored rollouts (the count-based ablation)",
        "choice",
        choices=CLUSTERINGS,
    )
    memory_bound: int = _knob(
        0,
        "keep at most this many feature vectors per prompt memory, evicting the oldest first",
        "int",
        lo=2,
        zero="unbounded, the reference",
    )
    seed: int = _knob(0, "seed of --meds.clustering random", "int", lo=0)
    feature_source: str = _knob(
        "vllm",
        "where features are computed: vllm: the patched vLLM engines, right after each group's "
        "rollouts; actor: hooks in the training-side log-prob forward (for engines the vLLM patch "
        "does not cover)",
        "choice",
        choices=FEATURE_SOURCES,
    )
    diversity: bool = _knob(
        True,
        "log train/div/* every step (eigen ratio and effective rank of each group's features, distinct "
        "final answers, answer entropy, repeated-error rate, within-group pass@k), MEDS on or off; "
        "with --meds.enable false, false runs plain OpenRLHF (the timing baseline)",
        "bool",
    )
    eval_before_training: bool = _knob(
        False,
        "evaluate on --eval.dataset once before the first training step (logged as step 0, eval rollouts "
        "stay out of the memory), as the official run validates the base model; not on resume",
        "bool",
    )
    memory_shards: int = _knob(
        1,
        "number of MemoryActor shards (Ray actors, CPU only); prompts are spread over them by a stable hash",
        "int",
        lo=1,
        hi=MAX_SHARDS,
    )
    memory_placement: str = _knob(
        "driver",
        "where the MemoryActor shards run: driver: on the driver's node (soft: elsewhere if it lacks CPUs); "
        "spread: shard i on the i-th alive node with CPUs, driver's node first (soft too), for many shards "
        "on a multi-node cluster (--meds.memory_dir and --ckpt.path must then be on a shared filesystem)",
        "choice",
        choices=MEMORY_PLACEMENTS,
    )
    filtered_into_memory: bool = _knob(
        False,
        "whether the groups that DAPO dynamic filtering drops (all raw scores equal) enter the memory "
        "(they are not shaped); false keeps them out, as the reference does",
        "bool",
    )
    filter_metric: str = _knob(
        "raw",
        "what OpenRLHF's dynamic filtering (--algo.dynamic_filtering_enable) decides on: raw (the official "
        "run, filter_groups.metric=acc): the verifier's scores, a group whose mean score is outside "
        "--algo.dynamic_filtering_range (all right or all wrong) is dropped before the memory sees it; "
        "shaped (a variant, the official code's filter_groups.metric=seq_final_reward): the MEDS-shaped "
        "rewards, every group enters the memory first and a group is dropped when its shaped rewards are "
        "all equal, so an all-wrong group whose rollouts MEDS penalizes differently is kept (needs "
        "--algo.dynamic_filtering_enable with the default range 0 1)",
        "choice",
        choices=FILTER_METRICS,
    )
    snapshot_interval: int = _knob(
        10,
        "training steps between the MemoryActor's recovery snapshots; 0: only with training checkpoints",
        "int",
        lo=0,
    )
    memory_dir: str = _knob(
        "",
        "directory of the MemoryActor's recovery snapshots and write-ahead log",
        "path",
        default_text="empty: a fresh temporary directory",
    )
    preset: str | None = _knob(
        None,
        "per-model values (alpha, beta, layers, target) under the explicit --meds.* flags",
        "preset",
        default_text="detected from --actor.model_name_or_path, none if no preset matches",
    )

    def __post_init__(self):
        # beta None = tied to alpha, resolved here so that it follows the alpha of the merged
        # defaults, preset and flags; an invalid alpha is left for validate() to name.
        if self.beta is None and KNOBS["alpha"].accepts(self.alpha):
            self.beta = 2 * self.alpha
        self.validate()

    def validate(self, given: Iterable[str] = ()) -> MedsConfig:
        """Check every value and the refused combinations; raise ValueError naming the flag(s).

        `given`: the knobs set explicitly (flags or overrides); only those count for the
        combinations refused when a given value would have no effect.
        """
        for name, knob in KNOBS.items():
            value = getattr(self, name)
            if not knob.accepts(value):
                raise ValueError(f"--meds.{name}: must be {knob.range_text()}, got {value!r}")
        if self.features == "semantic" and not self.embedding_model:
            raise ValueError(
                "--meds.features semantic needs --meds.embedding_model PATH: the encoder (a local model "
                "directory or a Hugging Face hub name) that embeds each response's text"
            )
        if self.eval_before_training and not (self.enable or self.diversity):
            raise ValueError(
                "--meds.eval_before_training needs MEDS's trainer: with --meds.enable false keep "
                "--meds.diversity true (plain OpenRLHF evaluates only after training steps)"
            )
        given = set(given)
        for rule in CONFLICTS:
            other, value = getattr(self, rule.other), getattr(self, rule.knob)
            if rule.knob_values is None:
                refused = rule.knob in given
            else:
                refused = value in rule.knob_values
            if refused and other in rule.other_values:
                raise ValueError(
                    f"--meds.{rule.knob} {_text(value)} has no effect with --meds.{rule.other} {_text(other)}: "
                    f"{rule.why}"
                )
        return self

    def to_dict(self) -> dict:
        """The knobs as a plain dict (`MedsConfig(**d)` rebuilds the config)."""
        return dataclasses.asdict(self)


KNOBS: dict[str, Knob] = {f.name: f.metadata["knob"] for f in fields(MedsConfig)}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(MedsConfig)}

CONFLICTS = (
    Conflict(
        "assignment",
        "clustering",
        ("random", "single"),
        "these ablations neither vote nor cluster the new rollouts; use --meds.clustering exact or hdbscan",
        knob_values=("joint",),
    ),
    Conflict(
        "assignment",
        "clustering",
        ("random", "single"),
        "these ablations neither vote nor cluster the new rollouts",
    ),
    Conflict("knn_k", "assignment", ("joint",), "joint assignment takes the rollout's own cluster, not a vote"),
    Conflict("knn_k", "clustering", ("random", "single"), "these ablations take no vote"),
    Conflict("noise", "clustering", ("single",), "single puts every stored rollout in one cluster, there is no noise"),
    Conflict(
        "seed",
        "clustering",
        tuple(c for c in CLUSTERINGS if c != "random"),
        "only --meds.clustering random draws random numbers",
    ),
    Conflict(
        "embedding_model",
        "features",
        ("logits",),
        "the encoder is used only by --meds.features semantic",
    ),
    *(
        Conflict(name, "features", ("semantic",), "semantic features do not use the per-layer logits")
        for name in ("layers", "layer_diff", "logit_lens", "feature_dtype")
    ),
    Conflict(
        "filtered_into_memory",
        "feature_source",
        ("actor",),
        "with the actor source, features exist only for the groups that dynamic filtering kept; "
        "use --meds.feature_source vllm",
        knob_values=(True,),
    ),
    Conflict(
        "filter_metric",
        "enable",
        (False,),
        "without MEDS the shaped reward is the raw score; the baseline filters on raw scores",
        knob_values=("shaped",),
    ),
    Conflict(
        "filter_metric",
        "feature_source",
        ("actor",),
        "with the actor source, features (hence penalties) exist only after dynamic filtering has run; "
        "use --meds.feature_source vllm",
        knob_values=("shaped",),
    ),
    Conflict(
        "filtered_into_memory",
        "filter_metric",
        ("shaped",),
        "the shaped filter needs every group's penalties, so every group enters the memory",
    ),
)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def default_text(name: str) -> str:
    """The default of knob `name` as its help shows it."""
    return KNOBS[name].default_text or _text(DEFAULTS[name])


def help_text(name: str) -> str:
    """`--meds.<name>`'s help: what it does, its range, its default, what it is refused with."""
    knob = KNOBS[name]
    text = f"{knob.what}; {knob.range_text()} (default {default_text(name)})"
    rules = [r for r in CONFLICTS if r.knob == name]
    given = [f"--meds.{r.other} {'|'.join(map(_text, r.other_values))}" for r in rules if r.knob_values is None]
    if given:
        text += "; refused when given with " + " or ".join(given)
    for r in rules:  # the refused values whoever set them, unless a rule above says it already
        if r.knob_values is not None and not any(g.other == r.other and g.knob_values is None for g in rules):
            vals = "|".join(map(_text, r.knob_values))
            text += f"; {vals} is refused with --meds.{r.other} {'|'.join(map(_text, r.other_values))}"
    return text


# ---------------------------------------------------------------- presets


def list_presets() -> dict[str, str]:
    """Preset name -> YAML path, for the presets shipped with the package."""
    return {os.path.splitext(os.path.basename(p))[0]: p for p in sorted(glob.glob(os.path.join(PRESET_DIR, "*.yaml")))}


def load_preset(name_or_path: str) -> dict:
    """Load a preset by shipped name (case-insensitive) or by YAML path.

    Returns the MedsConfig values it sets (keys other than `match`, `notes` and `tuned`).
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
    unknown = sorted(set(values) - set(KNOBS))
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
    """Defaults < preset (explicit, else detected from `model_path`) < explicit overrides.

    The overrides count as given: one that would have no effect is refused (`CONFLICTS`).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    preset = overrides.pop("preset", None) or preset or preset_for_model(model_path)
    values: dict[str, Any] = {}
    if preset:
        values.update(load_preset(preset))
        values["preset"] = preset
    values.update(overrides)
    return MedsConfig(**values).validate(given=overrides)


# ---------------------------------------------------------------- command line

_METAVARS = {"bool": "true|false", "number": "X", "int": "N", "path": "DIR", "model": "PATH", "preset": "NAME|PATH"}


def add_meds_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--meds.<field>` for every MedsConfig field (default None = not given), with the
    help of its `Knob`."""
    group = parser.add_argument_group(
        "MEDS reward shaping",
        "Precedence: built-in defaults (the official MEDS run) < preset < explicit --meds.* flags.",
    )
    for name, knob in KNOBS.items():
        kwargs: dict[str, Any] = dict(type=knob.parse, default=None, help=help_text(name))
        if knob.kind == "choice":
            kwargs["choices"] = knob.choices
        else:
            kwargs["metavar"] = "N|" + "|".join(knob.words) if knob.words else _METAVARS[knob.kind]
        if knob.kind == "bool":
            kwargs["nargs"] = "?"
            kwargs["const"] = True
        group.add_argument(f"--meds.{name}", dest=f"meds.{name}", **kwargs)
    return parser


def config_from_args(args: argparse.Namespace, model_path: str | None = None) -> MedsConfig:
    """Build the MedsConfig from parsed `--meds.*` flags (explicit flags beat the preset)."""
    given = {k[len("meds.") :]: v for k, v in vars(args).items() if k.startswith("meds.")}
    return resolve_config(given, model_path=model_path)
