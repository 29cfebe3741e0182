import argparse
import dataclasses
import os
import re

import pytest
import yaml

from openrlhf_meds.meds import MedsConfig, add_meds_args, config_from_args, list_presets, load_preset, resolve_config
from openrlhf_meds.meds.config import CONFLICTS, KNOBS, default_text, preset_for_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(REPO, "docs", "configuration.md")


def parse(argv, model_path=None):
    parser = add_meds_args(argparse.ArgumentParser())
    return config_from_args(parser.parse_args(argv), model_path=model_path)


def test_defaults_are_the_official_run():
    c = MedsConfig()
    assert (c.alpha, c.beta, c.layers, c.target, c.assignment, c.noise, c.knn_k) == (
        0.1,
        0.2,
        14,
        "wrong",
        "knn_prev",
        "cluster",
        3,
    )


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"alpha": -0.1}, "--meds.alpha"),
        ({"beta": float("nan")}, "--meds.beta"),
        ({"target": "wrongs"}, "--meds.target"),
        ({"layers": 0}, "--meds.layers"),
        ({"layers": "all"}, "--meds.layers"),
        ({"memory_bound": 1}, "--meds.memory_bound"),
        ({"clustering": "kmeans"}, "--meds.clustering"),
        ({"knn_k": 0}, "--meds.knn_k"),
        ({"memory_shards": 0}, "--meds.memory_shards"),
        ({"memory_shards": 1025}, "--meds.memory_shards"),
        ({"memory_shards": True}, "--meds.memory_shards"),
        ({"snapshot_interval": -1}, "--meds.snapshot_interval"),
        ({"feature_source": "hf"}, "--meds.feature_source"),
        ({"filtered_into_memory": "yes"}, "--meds.filtered_into_memory"),
        ({"filter_metric": "acc"}, "--meds.filter_metric"),
        ({"alpha": float("inf")}, "--meds.alpha"),
        ({"seed": -1}, "--meds.seed"),
        ({"memory_dir": None}, "--meds.memory_dir"),
    ],
)
def test_invalid_values_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        MedsConfig(**kwargs)


@pytest.mark.parametrize("alpha, beta", [(0.01, 0.02), (0.1, 0.2), (0.005, 0.01), (0.0, 0.0)])
def test_beta_defaults_to_twice_alpha(alpha, beta):
    # The official code caps ln(|C|+1) at 2.0, so its cap is 2 x alpha whatever alpha is.
    assert MedsConfig(alpha=alpha).beta == beta
    assert resolve_config({"alpha": alpha}).beta == beta
    assert parse(["--meds.alpha", str(alpha)]).beta == beta
    assert MedsConfig(alpha=alpha).to_dict()["beta"] == beta


def test_beta_default_follows_the_default_alpha():
    assert MedsConfig().alpha == 0.1
    assert MedsConfig().beta == 0.2
    assert parse([]).beta == 0.2
    assert MedsConfig(beta=None, alpha=0.3).beta == pytest.approx(0.6)


def test_explicit_beta_wins_over_the_tie(tmp_path):
    assert parse(["--meds.alpha", "0.01", "--meds.beta", "0.5"]).beta == 0.5
    assert parse(["--meds.beta", "0.05"]).beta == 0.05
    assert parse(["--meds.beta", "0"]).beta == 0.0  # 0 is a value, not "not given"
    assert MedsConfig(alpha=0.01, beta=0.3).beta == 0.3
    beta_only = tmp_path / "beta.yaml"
    beta_only.write_text("beta: 0.7\n")
    assert parse(["--meds.preset", str(beta_only)]).beta == 0.7
    # A preset's beta stays when the flag changes alpha: only an unset beta follows alpha.
    c = parse(["--meds.preset", str(beta_only), "--meds.alpha", "0.01"])
    assert (c.alpha, c.beta) == (0.01, 0.7)
    # The flag beats the preset's beta.
    assert parse(["--meds.preset", str(beta_only), "--meds.beta", "0.4"]).beta == 0.4


def test_beta_ties_to_the_merged_alpha(tmp_path):
    alpha_only = tmp_path / "alpha.yaml"
    alpha_only.write_text("alpha: 0.04\nlayers: 7\n")
    c = parse(["--meds.preset", str(alpha_only)])
    assert (c.alpha, c.beta, c.layers) == (0.04, 0.08, 7)
    c = parse(["--meds.preset", str(alpha_only), "--meds.alpha", "0.01"])
    assert (c.alpha, c.beta) == (0.01, 0.02)


def test_beta_validation_names_the_flag():
    for value, got in [(-0.1, "-0.1"), (float("inf"), "inf")]:
        with pytest.raises(ValueError, match=re.escape(f"--meds.beta: must be a number >= 0 and finite, got {got}")):
            MedsConfig(beta=value)
    with pytest.raises(ValueError, match=re.escape("--meds.beta: must be a number >= 0 and finite, got -1.0")):
        parse(["--meds.beta", "-1"])
    # An invalid alpha is reported as alpha's error, not as a derived beta's.
    with pytest.raises(ValueError, match=re.escape("--meds.alpha: must be a number >= 0 and finite, got -0.1")):
        MedsConfig(alpha=-0.1)
    with pytest.raises(ValueError, match=re.escape("--meds.alpha: must be a number >= 0 and finite, got 'x'")):
        MedsConfig(alpha="x")
    with pytest.raises(SystemExit):
        add_meds_args(argparse.ArgumentParser()).parse_args(["--meds.beta", "big"])


def test_beta_help_says_it_follows_alpha():
    found = helps()["--meds.beta"]
    assert "(default 2 x alpha)" in found
    assert "a value from this flag or a preset replaces it" in found


def test_presets_ship_and_load():
    presets = list_presets()
    assert {"qwen2.5-math-7b", "qwen2.5-math-1.5b", "qwen3-4b-base", "qwen3-8b-base", "llama-3.1-8b"} <= set(presets)
    # The official run's values, whether the file gives beta or leaves it tied to alpha.
    c = resolve_config(preset="Qwen2.5-Math-7B")
    assert (c.alpha, c.beta, c.layers, c.target, c.preset) == (0.1, 0.2, 14, "wrong", "Qwen2.5-Math-7B")
    assert {k: load_preset("Qwen2.5-Math-7B")[k] for k in ("alpha", "layers", "target")} == {
        "alpha": 0.1,
        "layers": 14,
        "target": "wrong",
    }
    for name, path in presets.items():
        data = yaml.safe_load(open(path))
        assert data["tuned"] is (name in {"qwen2.5-math-7b", "qwen3-1.7b", "qwen3-4b-base", "qwen3-8b"})
        if not data["tuned"]:
            assert "UNTUNED" in open(path).read()
    with pytest.raises(ValueError, match="unknown preset 'gpt-9'.*qwen2.5-math-7b"):
        load_preset("gpt-9")


def test_preset_detected_from_model_path_and_flags_override(tmp_path):
    assert preset_for_model("/models/Qwen2.5-Math-7B") == "qwen2.5-math-7b"
    assert preset_for_model("/models/Meta-Llama-3.1-8B-Instruct") == "llama-3.1-8b"
    assert preset_for_model("/models/tiny") is None
    custom = tmp_path / "mine.yaml"
    custom.write_text("alpha: 0.3\nbeta: 0.5\nlayers: half\n")
    c = parse(["--meds.preset", str(custom), "--meds.beta", "0.4"])
    assert (c.alpha, c.beta, c.layers, c.preset) == (0.3, 0.4, "half", str(custom))
    c = parse(["--meds.alpha", "0.05"], model_path="/m/Qwen3-8B-Base")
    assert (c.alpha, c.preset) == (0.05, "qwen3-8b-base")
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpah: 0.3\n")
    with pytest.raises(ValueError, match="unknown keys.*alpah"):
        resolve_config(preset=str(bad))


def test_command_line_flags():
    c = parse(["--meds.enable", "false", "--meds.layers", "half", "--meds.layer_diff", "--meds.memory_bound", "4096"])
    assert (c.enable, c.layers, c.layer_diff, c.memory_bound) == (False, "half", True, 4096)
    parser = add_meds_args(argparse.ArgumentParser())
    with pytest.raises(SystemExit):
        parser.parse_args(["--meds.target", "nobody"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--meds.enable", "maybe"])
    with pytest.raises(ValueError, match="--meds.alpha"):
        parse(["--meds.alpha", "-1"])


def helps() -> dict[str, str]:
    """--meds.<name> -> its help, whitespace as one space."""
    parser = add_meds_args(argparse.ArgumentParser())
    return {
        a.option_strings[0]: " ".join(a.help.split())
        for a in parser._actions
        if a.option_strings[0].startswith("--meds.")
    }


def test_every_field_has_a_flag_whose_help_names_its_default():
    shown = {
        "memory_dir": "empty: a fresh temporary directory",
        "preset": "detected from --actor.model_name_or_path",
        "beta": "2 x alpha",
    }
    found = helps()
    assert set(found) == {f"--meds.{f.name}" for f in dataclasses.fields(MedsConfig)}
    for f in dataclasses.fields(MedsConfig):
        expected = shown.get(f.name) or (str(f.default).lower() if isinstance(f.default, bool) else str(f.default))
        assert f"(default {expected}" in found[f"--meds.{f.name}"], f.name
    assert (
        "penalty slope: a rollout in a past-error cluster of size |C| loses min(alpha*ln(|C|+1), beta)"
        in (found["--meds.alpha"])
    )
    assert "a number >= 0 and finite (default 0.1)" in found["--meds.alpha"]
    assert "an integer in [1, 1024] (default 1)" in found["--meds.memory_shards"]


@pytest.mark.parametrize("name", [n for n, k in KNOBS.items() if k.kind == "choice"])
def test_the_choices_the_help_lists_are_the_accepted_values(name):
    listed = re.search(r"one of (\S+) \(default", helps()[f"--meds.{name}"]).group(1).split("|")
    assert listed == list(KNOBS[name].choices)
    for value in listed:
        needs = ["--meds.embedding_model", "/encoder"] if (name, value) == ("features", "semantic") else []
        assert getattr(parse([f"--meds.{name}", value, *needs]), name) == value
    with pytest.raises(ValueError, match=f"--meds.{name}: must be one of {'[|]'.join(listed)}, got 'kmeans'"):
        MedsConfig(**{name: "kmeans"})


@pytest.mark.parametrize(
    "name, accepted, refused",
    [("memory_shards", [1, 1024], [0, 1025]), ("memory_bound", [0, 2], [1, -1]), ("layers", [1, "half"], [0, "all"])],
)
def test_the_range_the_help_gives_is_the_range_validated(name, accepted, refused):
    rng = KNOBS[name].range_text()
    assert rng in helps()[f"--meds.{name}"]
    for value in accepted:
        assert getattr(MedsConfig(**{name: value}), name) == value
    for value in refused:
        with pytest.raises(ValueError, match=re.escape(f"--meds.{name}: must be {rng}, got {value!r}")):
            MedsConfig(**{name: value})


# (flags, the refused flag and value, the flag and value it has no effect with)
REFUSED = [
    ("--meds.assignment joint --meds.clustering random", "--meds.assignment joint", "--meds.clustering random"),
    ("--meds.assignment joint --meds.clustering single", "--meds.assignment joint", "--meds.clustering single"),
    ("--meds.assignment knn_prev --meds.clustering single", "--meds.assignment knn_prev", "--meds.clustering single"),
    ("--meds.knn_k 5 --meds.assignment joint", "--meds.knn_k 5", "--meds.assignment joint"),
    ("--meds.knn_k 3 --meds.assignment joint", "--meds.knn_k 3", "--meds.assignment joint"),
    ("--meds.knn_k 5 --meds.clustering random", "--meds.knn_k 5", "--meds.clustering random"),
    ("--meds.noise zero --meds.clustering single", "--meds.noise zero", "--meds.clustering single"),
    ("--meds.seed 1", "--meds.seed 1", "--meds.clustering exact"),
    ("--meds.seed 1 --meds.clustering hdbscan", "--meds.seed 1", "--meds.clustering hdbscan"),
    ("--meds.filtered_into_memory --meds.feature_source actor", "--meds.filtered_into_memory true",
     "--meds.feature_source actor"),
    ("--meds.embedding_model /enc", "--meds.embedding_model /enc", "--meds.features logits"),
    ("--meds.filter_metric shaped --meds.enable false", "--meds.filter_metric shaped", "--meds.enable false"),
    ("--meds.filter_metric shaped --meds.feature_source actor", "--meds.filter_metric shaped",
     "--meds.feature_source actor"),
    ("--meds.filter_metric shaped --meds.filtered_into_memory false", "--meds.filtered_into_memory false",
     "--meds.filter_metric shaped"),
    *((f"--meds.features semantic --meds.embedding_model /enc {flag}", flag, "--meds.features semantic")
      for flag in ("--meds.layers 4", "--meds.layer_diff true", "--meds.logit_lens false",
                   "--meds.feature_dtype float32")),
]  # fmt: skip


@pytest.mark.parametrize("argv, flag, other", REFUSED)
def test_refused_combinations_name_both_flags(argv, flag, other):
    with pytest.raises(ValueError, match=re.escape(f"{flag} has no effect with {other}: ")):
        parse(argv.split())


def test_every_conflict_rule_is_exercised():
    pairs = {(f.split()[0], o.split()[0]) for _, f, o in REFUSED}
    assert pairs == {(f"--meds.{r.knob}", f"--meds.{r.other}") for r in CONFLICTS}
    found = helps()
    for r in CONFLICTS:  # the help says what the validation refuses
        values = "|".join(str(v).lower() if isinstance(v, bool) else str(v) for v in r.other_values)
        assert f"--meds.{r.other} {values}" in found[f"--meds.{r.knob}"]


def test_combinations_where_every_value_acts_are_accepted(tmp_path):
    c = parse(["--meds.seed", "7", "--meds.clustering", "random", "--meds.noise", "zero"])
    assert (c.seed, c.clustering, c.noise) == (7, "random", "zero")
    c = parse(["--meds.knn_k", "5", "--meds.clustering", "hdbscan", "--meds.assignment", "knn_prev"])
    assert (c.knn_k, c.clustering) == (5, "hdbscan")
    assert parse(["--meds.assignment", "joint", "--meds.noise", "zero"]).assignment == "joint"
    assert parse(["--meds.filtered_into_memory", "--meds.feature_source", "vllm"]).filtered_into_memory is True
    assert parse(["--meds.filter_metric", "shaped"]).filter_metric == "shaped"
    assert parse(["--meds.filter_metric", "raw", "--meds.enable", "false"]).filter_metric == "raw"
    # The switches leave the other flags as they are, so one command line serves both runs.
    assert parse(["--meds.enable", "false", "--meds.alpha", "0.3", "--meds.knn_k", "5"]).alpha == 0.3
    assert parse(["--meds.target", "none", "--meds.alpha", "0.3"]).target == "none"


def test_only_given_values_count_as_given(tmp_path):
    """A preset's or a default's value never makes a flag refused, and a resolved config
    rebuilds from its dict (as the Ray actors do)."""
    custom = tmp_path / "k5.yaml"
    custom.write_text("knn_k: 5\n")
    c = parse(["--meds.preset", str(custom), "--meds.assignment", "joint"])
    assert (c.knn_k, c.assignment) == (5, "joint")
    assert MedsConfig(**c.to_dict()) == c
    assert MedsConfig(assignment="joint", knn_k=5).knn_k == 5  # Python values are not flags
    with pytest.raises(ValueError, match="--meds.assignment joint has no effect with --meds.clustering single"):
        MedsConfig(assignment="joint", clustering="single")  # a contradiction, whoever set it
    for name in list_presets():
        for clustering in ("exact", "hdbscan", "random", "single"):
            assert resolve_config({"clustering": clustering}, preset=name).clustering == clustering


def test_docs_describe_every_flag_and_refused_combination():
    text = open(DOC).read()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(--meds\.\w+)` \|", line)
        if m:
            rows[m.group(1)] = line.replace("\\|", "|").replace("`", "")
    for name, knob in KNOBS.items():
        assert f"--meds.{name}" in rows, name
        assert knob.range_text() in rows[f"--meds.{name}"], name
        assert rows[f"--meds.{name}"].endswith(f"| {default_text(name)} |"), name
    refused = text[text.index("## Refused combinations") :]
    for rule in CONFLICTS:
        assert re.search(f"`--meds.{rule.knob}[^|]*\\| `--meds.{rule.other}", refused), (rule.knob, rule.other)
    for preset in list_presets():
        assert f"| `{preset}` |" in text
