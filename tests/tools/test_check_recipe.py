"""The Qwen2.5-Math-7B recipes against the official runs (`openrlhf_meds.tools.check_recipe`): each recipe's
dry run prints every official setting and passes; a recipe changed without a reason fails,
naming the setting.

Each recipe is run by bash as a user runs it (`DRY_RUN=1`), with PYTHON pointing at a script that
records the command line the recipe builds instead of starting a second interpreter; the
command is then run here, in this process: `python -m openrlhf_meds.tools.check_recipe RUN ... -- FLAGS`
is `recipes.main([RUN, ..., "--", *FLAGS])`. So OpenRLHF's parser and the MEDS checks are
imported once for all the dry runs (~15 s) instead of once per recipe. No Ray, no model.
`test_dry_run_from_the_shell` runs one recipe end to end through a real interpreter.
"""

import os
import shutil
import subprocess
import sys

import pytest

from openrlhf_meds.tools import check_recipe as recipes
from openrlhf_meds.tools import official_runs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "examples", "scripts")
RECIPES = {
    "meds": "train_meds_qwen2.5_math_7b.sh",
    "dapo": "train_dapo_qwen2.5_math_7b.sh",
    "grpo": "train_grpo_qwen2.5_math_7b.sh",
    "grpo_entropy": "train_grpo_entropy_qwen2.5_math_7b.sh",
}
# What each recipe cannot reproduce and says why (--reason); every other setting is official.
EXPLAINED = {
    "meds": {
        "advantage_eps",
        "weight_decay_scope",
        "lr_warmup_granularity",
        "filter_refill",
        "meds_clustering",
    },
    "dapo": {"advantage_eps", "weight_decay_scope", "lr_warmup_granularity", "filter_refill"},
    "grpo": {"advantage_eps", "weight_decay_scope", "kl_loss_agg"},
    "grpo_entropy": {
        "advantage_eps",
        "weight_decay_scope",
        "kl_loss_agg",
        "lr_warmup_granularity",
    },
}


def recipe_command(tmp_path, script, scripts_dir=SCRIPTS, **given):
    """The argv (after `python`) that `DRY_RUN=1 bash script` runs, with the recipe's
    environment variables `given` (the others unset)."""
    record = tmp_path / "argv"
    shim = tmp_path / "record-python"
    shim.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{record}'\n")
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "EVAL_DATA", "NUM_PROMPTS", "MODEL")}
    env.update(DRY_RUN="1", EXTRA_ARGS="--cpu", PYTHON=str(shim), SAVE=str(tmp_path), **given)
    subprocess.run(["bash", os.path.join(scripts_dir, script)], env=env, check=True, capture_output=True, timeout=60)
    argv = record.read_bytes().decode().split("\0")[:-1]
    assert argv[:2] == ["-m", "openrlhf_meds.tools.check_recipe"]
    return argv[2:]


def run_check(argv, capsys):
    """`recipes.main(argv)`: (exit status, stdout, stderr)."""
    status = recipes.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def table_rows(out: str) -> dict[str, str]:
    """setting id -> its table line."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and " (" in line and not line.startswith("| setting"):
            rows[line[2:].split(" (", 1)[0]] = line
    return rows


@pytest.mark.parametrize("run", sorted(RECIPES))
def test_recipe_dry_run_prints_every_official_setting(run, tmp_path, capsys):
    argv = recipe_command(tmp_path, RECIPES[run], NUM_PROMPTS="17917")
    assert argv[0] == run
    status, out, err = run_check(argv, capsys)
    assert status == 0, err
    assert '"openrlhf": {' in out  # train_grpo's own dry run printed the resolved flags first
    rows = table_rows(out)
    assert list(rows) == [k for k in official_runs.SETTINGS if k in official_runs.OFFICIAL[run]]  # every setting
    explained = set()
    for key, value in official_runs.OFFICIAL[run].items():
        setting = official_runs.SETTINGS[key]
        official = (setting.show_official or setting.show)(value)
        line = rows[key]
        assert official.replace("|", "\\|") in line, key
        assert line.endswith("| = |") or "| differs: " in line, line
        if "| differs: " in line:
            explained.add(key)
    assert explained == EXPLAINED[run]
    assert f"every setting of the official {run} run is reproduced or its difference explained" in out


def test_recipe_values_of_the_runs(tmp_path, capsys):
    """The values that set the runs apart, as each dry run reads them from OpenRLHF's flags."""
    want = {
        "meds": {
            "meds": "yes",
            "updates_per_step": "32",
            "response_len": "3072",
            "lr_warmup": "10 steps (320",
            "engine_max_num_seqs": "1024",
            "engine_batched_tokens": "4096",
            "engine_gpu_memory": "0.85",
        },
        "grpo": {"meds": "no", "updates_per_step": "16", "response_len": "7168", "dual_clip": "3", "lr_warmup": "0"},
        "grpo_entropy": {
            "entropy_bonus": "A_t += min(0.4 * H_t, |A_t| / 2), H_t detached",
            "dual_clip": "10",
            "lr_warmup": "10 steps (320",
            "eval_temperature": "0 (greedy)",
        },
    }
    for run, values in want.items():
        status, out, err = run_check(recipe_command(tmp_path, RECIPES[run], NUM_PROMPTS="17917"), capsys)
        assert status == 0, err
        rows = table_rows(out)
        for key, value in values.items():
            this_run = rows[key].split(" | ")[2]
            assert this_run.startswith(value.replace("|", "\\|")), (run, key, this_run)


@pytest.fixture
def scripts_copy(tmp_path):
    """A copy of examples/scripts/ to edit (the recipes find their siblings next to them)."""
    root = tmp_path / "repo"
    shutil.copytree(SCRIPTS, root / "examples" / "scripts")
    return root / "examples" / "scripts"


def edit(path, old, new):
    """Replace `old` (which must occur) by `new` in the file; `new=None` drops the lines holding it."""
    text = path.read_text()
    assert old in text, old
    if new is None:
        text = "".join(line for line in text.splitlines(keepends=True) if old not in line)
    else:
        text = text.replace(old, new)
    path.write_text(text)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ("common_qwen2.5_math_7b.sh", "--actor.adam.betas 0.9 0.999", "--actor.adam.betas 0.9 0.95"),
            "betas: official 0.9 / 0.999, this run 0.9 / 0.95, and no --reason betas=...",
        ),
        (
            ("common_qwen2.5_math_7b.sh", "--ckpt.save_steps 50", "--ckpt.save_steps 20"),
            "save_steps: official 50, this run 20",
        ),
        (
            ("common_qwen2.5_math_7b.sh", "<|im_start|>assistant\\n<|im_end|>\\n<|im_start|>", "<|im_start|>"),
            "prompt: official chat messages",
        ),
        (
            (
                "train_meds_qwen2.5_math_7b.sh",
                "--meds.preset qwen2.5-math-7b",
                "--meds.preset qwen2.5-math-7b --meds.alpha 0.05",
            ),
            "meds_alpha: official 0.1, this run 0.05",
        ),
        (  # a reason taken away: the difference it explained now fails
            ("common_qwen2.5_math_7b.sh", '--reason "filter_refill=', None),
            "filter_refill: official up to 10 generation batches",
        ),
        (  # without the flag the engines take vLLM's device default, which is not the official run's
            ("common_qwen2.5_math_7b.sh", "--vllm.max_num_seqs 1024 ", ""),
            "engine_max_num_seqs: official 1024, this run vLLM's default for the engine's device",
        ),
        (  # a reason for a value that is the official one is refused too
            ("train_meds_qwen2.5_math_7b.sh", "launch meds ", 'launch meds --reason "lr=it is not different" '),
            "lr: a reason is given but the value is the official one (1e-06)",
        ),
    ],
    ids=["betas", "save_steps", "prompt", "meds_alpha", "reason_removed", "engine_default", "stale_reason"],
)
def test_recipe_changed_without_a_reason_fails_naming_the_setting(change, message, scripts_copy, tmp_path, capsys):
    name, old, new = change
    edit(scripts_copy / name, old, new)
    argv = recipe_command(tmp_path, RECIPES["meds"], scripts_dir=scripts_copy, NUM_PROMPTS="17917")
    status, out, err = run_check(argv, capsys)
    assert status == 1
    assert message in err
    assert "setting(s) of the official meds run" in err


def test_warmup_ratio_gives_ten_steps_for_any_data_size(tmp_path, capsys):
    """The recipes turn NUM_PROMPTS into --actor.lr_warmup_ratio; OpenRLHF's ceil(max_steps *
    ratio) is then 320 updates, 10 steps, whatever the size. A DATA .jsonl is counted when
    NUM_PROMPTS is not given."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join('{"prompt": "p", "label": "1"}\n' for _ in range(1234)))
    for env in ({"NUM_PROMPTS": "1000"}, {"NUM_PROMPTS": "99991"}, {"DATA": str(data)}):
        argv = recipe_command(tmp_path, RECIPES["dapo"], **env)
        assert argv[argv.index("--num_prompts") + 1] == env.get("NUM_PROMPTS", "1234")
        status, out, err = run_check(argv, capsys)
        assert status == 0, err
        assert "| 10 steps (320 optimizer updates) | = |" in table_rows(out)["lr_warmup"]


def test_prompt_compared_with_the_models_chat_template(qwen_tokenizer, tmp_path, capsys):
    """With the model's tokenizer on the machine, the template is compared with its rendering
    of the official messages (here Qwen's tokenizer with a ChatML template)."""
    model = tmp_path / "Qwen2.5-Math-7B"
    qwen_tokenizer.save_pretrained(model)
    rendered = qwen_tokenizer.apply_chat_template(
        official_runs.official_messages("x"), tokenize=False, add_generation_prompt=True
    )
    assert rendered == official_runs.chatml_rendering("x")
    status, out, err = run_check(recipe_command(tmp_path, RECIPES["grpo"], MODEL=str(model), NUM_PROMPTS="9"), capsys)
    assert status == 0, err
    assert f"note: prompt: compared with the chat template of {model}" in out
    template = qwen_tokenizer.chat_template
    try:  # a model whose template renders the turns otherwise
        qwen_tokenizer.chat_template = "{{ 'Chat: ' }}" + template
        qwen_tokenizer.save_pretrained(model)
    finally:
        qwen_tokenizer.chat_template = template  # the fixture is shared
    status, out, err = run_check(recipe_command(tmp_path, RECIPES["grpo"], MODEL=str(model), NUM_PROMPTS="9"), capsys)
    assert status == 1 and "prompt: official chat messages" in err


def test_bad_reasons_name_the_setting():
    with pytest.raises(ValueError, match="--reason nope: unknown setting"):
        recipes.parse_reasons(["nope=why"])
    with pytest.raises(ValueError, match="--reason 'lr': expected SETTING=WHY"):
        recipes.parse_reasons(["lr"])
    with pytest.raises(ValueError, match="--reason lr: given twice"):
        recipes.parse_reasons(["lr=a", "lr=b"])


def test_official_values_cover_the_official_runs():
    """Every official value has a reader; the baselines differ from the MEDS run where
    the official baseline runs do."""
    for values in official_runs.OFFICIAL.values():
        assert set(values) <= set(official_runs.SETTINGS)
    meds, dapo, grpo, ent = (official_runs.OFFICIAL[k] for k in ("meds", "dapo", "grpo", "grpo_entropy"))
    assert {k for k in meds if meds[k] != dapo.get(k)} == {k for k in meds if k.startswith("meds")}
    assert (grpo["clip"], grpo["dual_clip"], grpo["kl_loss"], grpo["response_len"]) == ((0.2, 0.2), 3.0, 0.001, 7168)
    assert (grpo["updates_per_step"], grpo["weight_decay"], grpo["lr_warmup"], grpo["eval_temperature"]) == (
        16,
        0.01,
        0,
        0.0,
    )
    assert {k for k in ent if ent[k] != grpo.get(k)} == {
        "dual_clip",
        "response_len",
        "minibatch",
        "updates_per_step",
        "weight_decay",
        "lr_warmup",
        "lr_warmup_granularity",
        "entropy_bonus",
    }


def test_official_verifier_file():
    """reward_math_official.py scores with the official Hendrycks MATH check, not math-verify."""
    import importlib.util

    def load(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    official, default = load("reward_math_official"), load("reward_math")
    assert official.MODE == "official"
    query = ["Q: It is \\boxed{\\frac{2}{4}}"]
    assert float(official.reward_func(query, ["Q:"], ["\\frac{1}{2}"])["scores"]) == 0.0
    assert float(default.reward_func(query, ["Q:"], ["\\frac{1}{2}"])["scores"]) == 1.0  # math-verify: equal
    assert float(official.reward_func(["Q: \\boxed{0.5}"], ["Q:"], ["\\frac{1}{2}"])["scores"]) == 1.0


@pytest.mark.slow
def test_dry_run_from_the_shell(tmp_path):
    """`DRY_RUN=1 bash recipe` through a real interpreter: the exit status and the table."""
    env = dict(os.environ, DRY_RUN="1", EXTRA_ARGS="--cpu", PYTHON=sys.executable, SAVE=str(tmp_path))
    run = subprocess.run(
        ["bash", os.path.join(SCRIPTS, RECIPES["meds"])], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| betas (Adam betas) | 0.9 / 0.999 | 0.9 / 0.999 | = |" in run.stdout
    assert "every setting of the official meds run is reproduced or its difference explained" in run.stdout


def _source(obj) -> str:
    import inspect

    return " ".join(inspect.getsource(obj).split())


def test_openrlhf_facts_the_table_states():
    """Contract (patches/README.md): the rows whose "this run" value is OpenRLHF 0.11.2's fixed
    behaviour, not a flag, read what its code does."""
    from openrlhf_meds.cpu import patches

    patches.install()  # OpenRLHF imports flash-attn's helpers
    import deepspeed.runtime.engine as ds_engine
    import openrlhf.cli.train_ppo_ray as script
    from openrlhf.trainer import ppo_trainer
    from openrlhf.trainer.ppo_utils import experience_maker, samples_generator
    from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer
    from openrlhf.utils import agent
    from openrlhf.utils.deepspeed import deepspeed as ds_strategy
    from openrlhf.utils.deepspeed import deepspeed_utils

    # advantage_eps: group_norm divides by std + 1e-9 (torch.std: unbiased)
    advantages = _source(experience_maker.RemoteExperienceMaker.compute_advantages_and_returns)
    assert "(rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + 1e-9)" in advantages
    # filter_refill: a dropped group's prompt is replaced by exactly one new prompt, no batch count
    generate = _source(samples_generator.SamplesGenerator._generate_vllm)
    assert "_collect_prompt_batch(dataloader_iter, 1)" in generate
    assert "if not (min_r < avg_reward < max_r):" in generate
    # top_k: no flag; vLLM gets top_k=-1
    assert '"top_k", -1' in _source(samples_generator.SamplesGenerator._dispatch_prompts_to_vllm)
    assert "top_k" not in open(script.__file__).read()
    # prompt_truncation: the last max_prompt_length tokens are kept
    assert "prompt_token_ids = prompt_token_ids[-max_prompt_length:]" in _source(agent)
    # weight_decay_scope: biases and norm weights in a group without decay
    groups = _source(deepspeed_utils.get_optimizer_grouped_parameters)
    assert '"bias"' in groups and '"norm.weight"' in groups and '"weight_decay": 0.0' in groups
    assert "get_optimizer_grouped_parameters(" in _source(ds_strategy.DeepspeedStrategy._get_model_parameters)
    # lr_warmup and its granularity: ceil(max_steps * ratio) updates, the scheduler stepped by the
    # DeepSpeed engine at every optimizer step; max_steps from the number of prompts
    prepare = _source(ds_strategy.DeepspeedStrategy)
    assert 'num_warmup_steps=math.ceil(scheduler_steps * cfg.get("lr_warmup_ratio", 0.03))' in prepare
    assert "lr_scheduler=sched_factory" in prepare
    assert "self.lr_scheduler.step(" in _source(ds_engine.DeepSpeedEngine._take_model_step)
    steps = _source(ppo_trainer.prepare_datasets)
    assert (
        "len(prompts_dataset) * args.rollout.n_samples_per_prompt // args.train.batch_size * args.train.num_episodes"
        " * args.train.max_epochs" in steps
    )
    # eval_before_training: fit evaluates only inside its step loop, after train_step, and
    # calls init_checkpoint_states (where MedsPPOTrainer adds the step-0 validation) first
    fit = _source(ppo_trainer.PPOTrainer.__ray_metadata__.modified_class.fit)
    assert fit.count("self.evaluate(") == 1
    assert fit.index("self.train_step(") < fit.index("if global_step % self.args.eval.steps == 0")
    assert fit.index("self.init_checkpoint_states()") < fit.index("self.train_step(")
    # kl_loss_agg: the KL loss is aggregated with loss_batch_info only (token-mean)
    assert "kl_loss = aggregate_loss(kl, experience.action_mask, **loss_batch_info)" in _source(
        ActorPPOTrainer.training_step
    )
