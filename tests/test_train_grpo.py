"""train_grpo's flags (split from OpenRLHF's, checked against them, dry run), the GPU recipes,
and the contract with the OpenRLHF names it replaces."""

import argparse
import glob
import inspect
import os
import subprocess
import sys

import pytest
import torch

from openrlhf_meds.train_grpo import check_openrlhf_args, parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(
    glob.glob(os.path.join(REPO, "examples/scripts/*.sh")) + glob.glob(os.path.join(REPO, "examples/scripts/*.sbatch"))
)


def test_meds_flags_are_split_from_openrlhf_flags():
    ours, config, rest = parse(
        [
            "--actor.model_name_or_path",
            "/m/Qwen2.5-Math-7B",
            "--meds.alpha",
            "0.05",
            "--rollout.n_samples_per_prompt",
            "8",
            "--cpu",
        ]
    )
    assert ours.cpu and not ours.dry_run
    assert config.alpha == 0.05 and config.preset == "qwen2.5-math-7b"  # preset detected from the path
    assert rest[:4] == ["--actor.model_name_or_path", "/m/Qwen2.5-Math-7B", "--rollout.n_samples_per_prompt", "8"]
    assert rest[4:] == ["--algo.advantage.estimator", "group_norm", "--vllm.enable_prefix_caching"]  # GRPO defaults
    _, _, rest = parse(["--algo.advantage.estimator=rloo", "--meds.enable", "false", "--meds.diversity", "false"])
    assert rest == ["--algo.advantage.estimator=rloo"]  # the user's choice stands; no features, no re-prefill
    _, _, rest = parse(["--meds.enable", "false"])  # the baseline's train/div/* features re-prefill too
    assert rest == ["--algo.advantage.estimator", "group_norm", "--vllm.enable_prefix_caching"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--meds.alpah", "0.1"], "unknown MEDS flag --meds.alpah"),
        (["--meds.alpha", "-1"], "--meds.alpha: must be a number >= 0"),
        (["--meds.preset", "nope"], "--meds.preset: unknown preset"),
        (["--meds.target", "all"], "argument --meds.target: invalid choice"),
        (
            ["--meds.knn_k", "5", "--meds.clustering", "single"],
            "--meds.knn_k 5 has no effect with --meds.clustering single",
        ),
        (["--vllm.max_num_seqs", "0"], "--vllm.max_num_seqs must be a positive integer, got '0'"),
        (["--vllm.max_num_batched_tokens", "4k"], "--vllm.max_num_batched_tokens must be a positive integer"),
        (
            ["--vllm.max_num_seqs", "1024", "--vllm.max_num_batched_tokens", "512"],
            "--vllm.max_num_batched_tokens (512) must be at least --vllm.max_num_seqs (1024)",
        ),
    ],
)
def test_bad_flags_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_engine_batch_flags_reach_every_rollout_engine_factory():
    """--vllm.max_num_seqs / --vllm.max_num_batched_tokens are train_grpo's own (OpenRLHF 0.11.2
    has none): parsed, validated, and given to the rollout actor factory of every kind of run."""
    from openrlhf_meds.cpu import patches
    from openrlhf_meds.integration.openrlhf import ROLLOUT_ACTOR, engine_batch, replacements

    patches.install()
    flags = ["--vllm.max_num_seqs", "1024", "--vllm.max_num_batched_tokens", "4096"]
    for extra in ([], ["--meds.enable", "false"], ["--meds.enable", "false", "--meds.diversity", "false"]):
        ours, config, rest = parse([*flags, *extra])
        assert not any(a.startswith("--vllm.max_num") for a in rest)  # OpenRLHF's parser would refuse them
        batch = engine_batch(ours)
        assert batch == {"max_num_seqs": 1024, "max_num_batched_tokens": 4096}
        engines = replacements(config, batch=batch)[ROLLOUT_ACTOR].options(num_gpus=1)
        assert engines.batch == batch and engines.opts == {"num_gpus": 1}
        assert (engines.config is None) == (extra[-1:] == ["false"] and "--meds.diversity" in extra)
    ours, config, _ = parse([])
    assert engine_batch(ours) == {"max_num_seqs": None, "max_num_batched_tokens": None}  # vLLM's device default


# Without CUDA, --help alone takes the --cpu path (OpenRLHF's script imports only under CPU
# mode), so the two differ only on a GPU machine.
HELP_ARGVS = [["--help"], ["--cpu", "--help"]] if torch.cuda.is_available() else [["--help"]]


@pytest.mark.parametrize("argv", HELP_ARGVS, ids=" ".join)
def test_help_prints_the_meds_section_then_openrlhfs_flags(argv):
    """Without CUDA, OpenRLHF's script imports under CPU mode's patches: on this machine both
    runs list its flags that way."""
    run = subprocess.run(
        [sys.executable, "-m", "openrlhf_meds.train_grpo", *argv], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = " ".join(run.stdout.split())
    assert "--meds.alpha X penalty slope: a rollout in a past-error cluster of size |C| loses" in out
    assert "min(alpha*ln(|C|+1), beta)" in out and "(default 0.1)" in out
    assert "--cpu CPU-only machine" in out and "--dry_run check flags" in out
    assert "OpenRLHF's defaults differ in one place: --algo.advantage.estimator group_norm" in out  # the epilog
    assert "--algo.advantage.estimator {gae,reinforce,rloo,reinforce_baseline,group_norm" in out  # OpenRLHF's parser
    assert "--actor.model_name_or_path" in out
    assert "--vllm.max_num_seqs VLLM.MAX_NUM_SEQS requests each rollout engine runs at once" in out
    assert out.index("--meds.preset") < out.index("usage: train_ppo_ray")  # ours first, then OpenRLHF's


def _flat(**values):
    base = {
        "reward.remote_url": "r.py",
        "train.agent_func_path": None,
        "train.async_enable": False,
        "vllm.num_engines": 1,
    }
    base.update({k.replace("__", "."): v for k, v in values.items()})
    return argparse.Namespace(**base)


@pytest.mark.parametrize(
    "flat, message",
    [
        (_flat(reward__remote_url=None), "--reward.remote_url"),
        (_flat(vllm__num_engines=0), "--vllm.num_engines"),
    ],
)
def test_conflicting_openrlhf_flags_name_the_flag(flat, message):
    _, config, _ = parse([])
    with pytest.raises(SystemExit, match=message.replace(".", r"\.")):
        check_openrlhf_args(flat, config)
    _, plain, _ = parse(["--meds.enable", "false", "--meds.diversity", "false"])
    check_openrlhf_args(flat, plain)  # plain OpenRLHF has no such needs
    _, baseline, _ = parse(["--meds.enable", "false"])  # the baseline's train/div/* need MEDS's engines
    with pytest.raises(SystemExit, match=message.replace(".", r"\.")):
        check_openrlhf_args(flat, baseline)


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipes_parse(path):
    subprocess.run(["bash", "-n", path], check=True)


def test_openrlhf_names_train_grpo_replaces():
    """Contract (patches/README.md): train_ppo_ray looks these names up at run time, so
    replacing the module attributes before it runs reaches it."""
    from openrlhf_meds.cpu import patches

    patches.install()
    import openrlhf.cli.train_ppo_ray as script
    from openrlhf.trainer.ray import vllm_engine

    train = inspect.getsource(script.train)
    assert "from openrlhf.trainer.ppo_trainer import PPOTrainer" in train
    assert "from openrlhf.trainer.ppo_trainer_async import PPOTrainerAsync as PPOTrainer" in train
    assert "ppo_trainer = PPOTrainer.remote(" in train
    assert "hierarchize(args)" in inspect.getsource(script)
    assert "RolloutRayActor.options(" in inspect.getsource(vllm_engine.create_vllm_engines)
    assert inspect.iscoroutinefunction(vllm_engine.RolloutRayActor.__ray_metadata__.modified_class.__init__)
