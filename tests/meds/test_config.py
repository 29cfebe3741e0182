import argparse

import pytest
import yaml

from openrlhf_meds.meds import MedsConfig, add_meds_args, config_from_args, list_presets, load_preset, resolve_config
from openrlhf_meds.meds.config import preset_for_model


def parse(argv, model_path=None):
    parser = add_meds_args(argparse.ArgumentParser())
    return config_from_args(parser.parse_args(argv), model_path=model_path)


def test_defaults_are_the_official_run():
    c = MedsConfig()
    assert (c.alpha, c.beta, c.layers, c.target, c.assignment, c.noise, c.knn_k) == (0.1, 0.2, 14, "wrong", "knn_prev", "cluster", 3)


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
    ],
)
def test_invalid_values_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        MedsConfig(**kwargs)


def test_presets_ship_and_load():
    presets = list_presets()
    assert {"qwen2.5-math-7b", "qwen2.5-math-1.5b", "qwen3-4b-base", "qwen3-8b-base", "llama-3.1-8b"} <= set(presets)
    assert load_preset("Qwen2.5-Math-7B") == {"alpha": 0.1, "beta": 0.2, "layers": 14, "target": "wrong"}
    for name, path in presets.items():
        data = yaml.safe_load(open(path))
        assert data["tuned"] is (name == "qwen2.5-math-7b")
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
