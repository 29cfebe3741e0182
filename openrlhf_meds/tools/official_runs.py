"""The official MEDS runs as data: every setting of each run (`OFFICIAL`) and how a run's
value of it is read from its dry run (`SETTINGS`), for `tools/check_recipe.py`.

`OFFICIAL` holds the official values (read from the official MEDS repository's run scripts;
the MEDS knobs as its reference code behaves): the MEDS run in full and each baseline as the
MEDS run with the values it changes. `SETTINGS` says how each is read from OpenRLHF 0.11.2's
flags (a `Setting`: `read(run)`, compared with `same`, written with `show`), or, where no flag
sets it, what OpenRLHF 0.11.2 does (checked against its code by
`tests/tools/test_check_recipe.py::test_openrlhf_facts_the_table_states`).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
# A problem with braces and a newline: str.format must leave them alone.
SAMPLE_PROBLEM = "Find $x$ if $\\frac{x}{2} = 3$.\nGive {x} as an integer."


def official_messages(problem: str) -> list[dict[str, str]]:
    """The official prompt: the system turn, the problem as the user turn, an empty assistant turn."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": problem},
        {"role": "assistant", "content": ""},
    ]


def chatml_rendering(problem: str) -> str:
    """`official_messages` rendered as Qwen2.5's ChatML chat template renders them with a
    generation prompt (each turn `<|im_start|>role\\ncontent<|im_end|>\\n`, the empty assistant
    turn included); used when the model's own tokenizer is not on this machine."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in official_messages(problem))
    return turns + "<|im_start|>assistant\n"


@dataclass
class Run:
    """What a run's dry run resolved: OpenRLHF's flags (flat, as parsed: `vars(args)` before
    `hierarchize`), the MEDS configuration, the entropy advantage settings, the number of
    training prompts (for the warm-up length)."""

    openrlhf: dict[str, Any]
    meds: dict[str, Any]
    entropy_adv: Any = None
    num_prompts: int | None = None
    notes: list[str] = field(default_factory=list)

    def o(self, name: str) -> Any:
        """OpenRLHF flag `--name`'s parsed value."""
        return self.openrlhf[name]

    def updates_per_step(self) -> float:
        """Optimizer updates per training step: every rollout of the step, `--train.batch_size`
        rollouts per update, `--train.max_epochs` passes."""
        rollouts = self.o("rollout.batch_size") * self.o("rollout.n_samples_per_prompt")
        return rollouts / self.o("train.batch_size") * self.o("train.max_epochs")

    def warmup_updates(self) -> int | None:
        """OpenRLHF's warm-up length in optimizer updates: `ceil(max_steps * lr_warmup_ratio)`
        with `max_steps` as `prepare_datasets` computes it; None without `num_prompts`."""
        if self.o("actor.lr_scheduler") == "constant":
            return 0
        if self.num_prompts is None:
            return None
        max_steps = (
            self.num_prompts
            * self.o("rollout.n_samples_per_prompt")
            // self.o("train.batch_size")
            * self.o("train.num_episodes")
            * self.o("train.max_epochs")
        )
        return math.ceil(max_steps * self.o("actor.lr_warmup_ratio"))


def _fmt(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return " / ".join(_fmt(v) for v in value)
    return str(value)


def _eq(official: Any, got: Any) -> bool:
    if isinstance(official, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return math.isclose(official, got, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(official, tuple) and isinstance(got, tuple) and len(official) == len(got):
        return all(_eq(a, b) for a, b in zip(official, got))
    return official == got


@dataclass(frozen=True)
class Setting:
    """How one official setting is read from a run: `read(run)` is this run's value, compared
    with the official one by `same` (default: equal, floats to 1e-12); `show` writes either
    value for the table."""

    what: str
    read: Callable[[Run], Any]
    same: Callable[[Any, Any], bool] = _eq
    show: Callable[[Any], str] = _fmt
    show_official: Callable[[Any], str] | None = None


def _clip(run: Run) -> tuple:
    low_high = run.o("actor.eps_clip_low_high")
    eps = run.o("actor.eps_clip")
    return tuple(float(x) for x in low_high) if low_high is not None else (float(eps), float(eps))


def _dynamic_filtering(run: Run):
    if not run.o("algo.dynamic_filtering_enable"):
        return None
    return tuple(float(x) for x in run.o("algo.dynamic_filtering_range"))


def _overlong(run: Run):
    if run.o("reward.overlong_buffer_len") is None:
        return None
    return (float(run.o("reward.overlong_buffer_len")), float(run.o("reward.overlong_penalty_factor")))


def _lr_schedule(run: Run) -> str:
    name = run.o("actor.lr_scheduler")
    # transformers' constant_with_warmup is constant once the warm-up (a row of its own) ends
    return "constant" if name in ("constant", "constant_with_warmup") else name


def _warmup(run: Run) -> tuple[int | float, int] | None:
    """(warm-up length in steps, in optimizer updates); None without `num_prompts`."""
    updates = run.warmup_updates()
    if updates is None:
        return None
    steps = updates / run.updates_per_step()
    return (int(steps) if steps == int(steps) else steps), updates


def _show_warmup(value) -> str:
    if value is None:
        return "unknown: --num_prompts not given"
    return f"{_fmt(value[0])} steps ({value[1]} optimizer updates)"


def _entropy_bonus(run: Run):
    settings = run.entropy_adv
    if settings is None or not settings.enabled:
        return None
    return (float(settings.coef), float(settings.kappa))


def _show_bonus(value) -> str:
    return "off" if value is None else f"A_t += min({value[0]:g} * H_t, |A_t| / {value[1]:g}), H_t detached"


def _verifier(run: Run) -> str:
    """The `MODE` of the reward file (`--reward.remote_url`), or what it is if not a file."""
    url = run.o("reward.remote_url")
    if not url or not str(url).endswith(".py"):
        return f"not a reward file: {url}"
    spec = importlib.util.spec_from_file_location("_recipe_reward", url)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (OSError, ImportError) as e:
        return f"{url} does not load: {e}"
    return getattr(module, "MODE", f"{url} has no MODE")


def _prompt(run: Run) -> tuple[str, str | None, str]:
    """How the prompt is built, the sample problem so rendered (None through the chat template or
    without a template), and the official messages rendered for the model (`_model_rendering`)."""
    want, where = _model_rendering(run)
    run.notes.append(f"prompt: compared with {where}")
    if run.o("data.apply_chat_template"):
        return ("the dataset's messages through the chat template", None, want)
    template = run.o("data.input_template")
    if template is None:
        return ("the raw problem (no template)", None, want)
    try:
        return (template, template.format(SAMPLE_PROBLEM), want)
    except (IndexError, KeyError, ValueError) as e:
        return (template, f"--data.input_template does not format: {e}", want)


def _model_rendering(run: Run) -> tuple[str, str]:
    """The official messages of SAMPLE_PROBLEM rendered by the model's own chat template,
    if its tokenizer is on this machine; else the Qwen2.5 ChatML rendering."""
    model = run.o("actor.model_name_or_path")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        if tokenizer.chat_template:
            rendered = tokenizer.apply_chat_template(
                official_messages(SAMPLE_PROBLEM), tokenize=False, add_generation_prompt=True
            )
            return rendered, f"the chat template of {model}"
    except Exception:  # noqa: BLE001 - any failure to load means: not on this machine
        pass
    return chatml_rendering(SAMPLE_PROBLEM), f"Qwen2.5's ChatML rendering ({model}'s tokenizer is not on this machine)"


def _show_prompt(value) -> str:
    return json.dumps(value[0]) if value[1] is not None else value[0]


def _show_engine_default(value) -> str:
    return "vLLM's default for the engine's device (vllm.LLM's)" if value is None else _fmt(value)


# setting id -> how it is read; the ids are what `--reason` names
SETTINGS: dict[str, Setting] = {
    "advantage": Setting("advantage estimator", lambda r: r.o("algo.advantage.estimator")),
    "advantage_std": Setting(
        "advantage: divided by the group's",
        lambda r: None if r.o("algo.advantage.no_std_norm") else "unbiased std",
    ),
    # OpenRLHF's group_norm adds a fixed 1e-9 (experience_maker.compute_advantages_and_returns)
    "advantage_eps": Setting("advantage: std + eps", lambda r: 1e-9),
    "meds": Setting("MEDS shaping", lambda r: r.meds["enable"]),
    "meds_alpha": Setting("MEDS alpha", lambda r: r.meds["alpha"]),
    "meds_beta": Setting("MEDS cap beta", lambda r: r.meds["beta"]),
    "meds_layers": Setting("MEDS feature: last N layers", lambda r: r.meds["layers"]),
    "meds_layer_diff": Setting("MEDS feature: layer differences", lambda r: r.meds["layer_diff"]),
    "meds_logit_lens": Setting("MEDS feature: final norm on every layer", lambda r: r.meds["logit_lens"]),
    "meds_target": Setting("MEDS target", lambda r: r.meds["target"]),
    "meds_clustering": Setting("MEDS clustering", lambda r: r.meds["clustering"]),
    "meds_assignment": Setting("MEDS assignment", lambda r: r.meds["assignment"]),
    "meds_knn_k": Setting("MEDS kNN k", lambda r: r.meds["knn_k"]),
    "meds_noise": Setting("MEDS noise vote", lambda r: r.meds["noise"]),
    "meds_memory_bound": Setting(
        "MEDS memory per prompt", lambda r: r.meds["memory_bound"], show=lambda v: "unbounded" if v == 0 else str(v)
    ),
    "meds_filtered_into_memory": Setting("MEDS: filtered groups into memory", lambda r: r.meds["filtered_into_memory"]),
    "meds_filter_metric": Setting("dynamic filtering on the", lambda r: f"{r.meds['filter_metric']} reward"),
    "kl_reward": Setting(
        "KL in the reward (coef)",
        lambda r: 0.0 if r.o("algo.kl.use_loss") else float(r.o("algo.kl.init_coef")),
    ),
    "kl_loss": Setting("KL loss (coef)", lambda r: float(r.o("algo.kl.init_coef")) if r.o("algo.kl.use_loss") else 0.0),
    "kl_estimator": Setting("KL loss estimator", lambda r: r.o("algo.kl.estimator")),
    # ActorPPOTrainer.training_step: aggregate_loss(kl, ...) without token_level_loss
    "kl_loss_agg": Setting("KL loss aggregation", lambda r: "token-mean"),
    "clip": Setting("PPO clip low / high", _clip),
    "dual_clip": Setting("dual-clip c", lambda r: r.o("actor.dual_clip")),
    "policy_loss": Setting("policy loss", lambda r: r.o("actor.policy_loss_type")),
    "loss_agg": Setting("loss aggregation", lambda r: r.o("actor.loss_agg_mode")),
    "entropy_coef": Setting("entropy loss coefficient", lambda r: float(r.o("actor.entropy_coef") or 0.0)),
    "entropy_bonus": Setting("entropy advantage bonus", _entropy_bonus, show=_show_bonus),
    "dynamic_filtering": Setting("dynamic filtering: keep groups with low < mean raw score < high", _dynamic_filtering),
    # SamplesGenerator._generate_vllm: a dropped prompt's replacement is dispatched at once
    "filter_refill": Setting(
        "dynamic filtering: refill",
        lambda r: "each dropped prompt replaced by the next one, no limit",
    ),
    "overlong": Setting(
        "overlong penalty: buffer / factor",
        _overlong,
    ),
    "prompts_per_step": Setting("prompts per step", lambda r: r.o("rollout.batch_size")),
    "rollouts_per_prompt": Setting("rollouts per prompt", lambda r: r.o("rollout.n_samples_per_prompt")),
    "minibatch": Setting("rollouts per optimizer update", lambda r: r.o("train.batch_size")),
    "updates_per_step": Setting("optimizer updates per step", lambda r: r.updates_per_step()),
    "optimizer": Setting(
        # --actor.optim adam is DeepSpeed's AdamW (decoupled weight decay)
        "optimizer",
        lambda r: "AdamW" if r.o("actor.optim") == "adam" else r.o("actor.optim"),
    ),
    "lr": Setting("learning rate", lambda r: r.o("actor.adam.lr")),
    "betas": Setting("Adam betas", lambda r: tuple(float(b) for b in r.o("actor.adam.betas"))),
    "weight_decay": Setting("weight decay", lambda r: r.o("actor.adam.weight_decay")),
    # DeepspeedStrategy._get_model_parameters -> get_optimizer_grouped_parameters
    "weight_decay_scope": Setting("weight decay applies to", lambda r: "all parameters but biases and norm weights"),
    "grad_clip": Setting("gradient clip (global norm)", lambda r: r.o("actor.max_norm")),
    "lr_schedule": Setting("LR schedule after warm-up", _lr_schedule),
    "lr_warmup": Setting(
        "LR warm-up (linear from 0)",
        _warmup,
        same=lambda official, got: got is not None and _eq(official, got[0]),
        show=_show_warmup,
        show_official=lambda v: f"{v} steps",
    ),
    # the DeepSpeed engine steps OpenRLHF's scheduler at every optimizer update
    "lr_warmup_granularity": Setting("LR warm-up: lr changes", lambda r: "at every optimizer update"),
    "prompt_len": Setting("max prompt tokens", lambda r: r.o("data.max_len") - (r.o("rollout.max_new_tokens") or 0)),
    # utils/agent.py: prompt_token_ids[-max_prompt_length:]
    "prompt_truncation": Setting("longer prompts truncated on the", lambda r: "left"),
    "response_len": Setting("max response tokens", lambda r: r.o("rollout.max_new_tokens")),
    "temperature": Setting("sampling temperature", lambda r: r.o("rollout.temperature")),
    "top_p": Setting("sampling top-p", lambda r: r.o("rollout.top_p")),
    # no --rollout.top_k in 0.11.2: SamplesGenerator passes vLLM top_k=-1
    "top_k": Setting("sampling top-k", lambda r: None),
    "eval_data": Setting(
        "validation data", lambda r: r.o("eval.dataset"), same=lambda official, got: bool(got), show=str
    ),
    # MedsPPOTrainer.init_checkpoint_states (PPOTrainer.fit alone never evaluates at step 0)
    "eval_before_training": Setting("validation before training", lambda r: r.meds["eval_before_training"]),
    "eval_steps": Setting("validation every N steps", lambda r: r.o("eval.steps")),
    "eval_samples": Setting("validation samples per problem", lambda r: r.o("eval.n_samples_per_prompt")),
    "eval_temperature": Setting(
        "validation temperature",
        lambda r: r.o("eval.temperature"),
        show=lambda v: f"{v:g} (greedy)" if v == 0 else _fmt(v),
    ),
    "epochs": Setting("epochs over the data", lambda r: r.o("train.num_episodes")),
    "save_steps": Setting("checkpoint every N steps", lambda r: r.o("ckpt.save_steps")),
    "resume": Setting("resume from a checkpoint", lambda r: r.o("ckpt.load_enable")),
    "data": Setting(
        "training data", lambda r: r.o("data.prompt_dataset"), same=lambda official, got: bool(got), show=str
    ),
    "prompt": Setting(
        "prompt", _prompt, same=lambda official, got: got[1] == got[2], show=_show_prompt, show_official=str
    ),
    "verifier": Setting("verifier (reward file MODE)", _verifier),
    # --vllm.max_num_seqs / max_num_batched_tokens: train_grpo's flags (integration.openrlhf)
    "engine_max_num_seqs": Setting(
        "rollout engine: requests at once", lambda r: r.o("vllm.max_num_seqs"), show=_show_engine_default
    ),
    "engine_batched_tokens": Setting(
        "rollout engine: tokens per step", lambda r: r.o("vllm.max_num_batched_tokens"), show=_show_engine_default
    ),
    "engine_gpu_memory": Setting("rollout engine: GPU memory share", lambda r: r.o("vllm.gpu_memory_utilization")),
}

_OFFICIAL_PROMPT = (
    'chat messages: system "' + SYSTEM_PROMPT + '", the problem as the user turn, an empty assistant '
    "turn; rendered by the chat template with a generation prompt"
)

# The MEDS run (Qwen2.5-Math-7B, 8 GPUs); the MEDS knobs as the official code behaves.
MEDS_RUN: dict[str, Any] = {
    "advantage": "group_norm",
    "advantage_std": "unbiased std",
    "advantage_eps": 1e-6,
    "meds": True,
    "meds_alpha": 0.1,
    "meds_beta": 0.2,
    "meds_layers": 14,
    "meds_layer_diff": False,
    "meds_logit_lens": False,
    "meds_target": "wrong",
    "meds_clustering": "hdbscan",
    "meds_assignment": "knn_prev",
    "meds_knn_k": 3,
    "meds_noise": "cluster",
    "meds_memory_bound": 0,
    "meds_filtered_into_memory": False,
    "meds_filter_metric": "raw reward",  # filter_groups.metric=acc
    "kl_reward": 0.0,
    "kl_loss": 0.0,
    "clip": (0.2, 0.28),
    "dual_clip": 10.0,
    "policy_loss": "ppo",
    "loss_agg": "token-mean",
    "entropy_coef": 0.0,
    "entropy_bonus": None,
    "dynamic_filtering": (0.0, 1.0),
    "filter_refill": "up to 10 generation batches concatenated to fill the batch",
    "overlong": (512.0, 1.0),
    "prompts_per_step": 512,
    "rollouts_per_prompt": 16,
    "minibatch": 256,
    "updates_per_step": 32,
    "optimizer": "AdamW",
    "lr": 1e-6,
    "betas": (0.9, 0.999),
    "weight_decay": 0.1,
    "weight_decay_scope": "all parameters",
    "grad_clip": 1.0,
    "lr_schedule": "constant",
    "lr_warmup": 10,
    "lr_warmup_granularity": "once per training step",
    "prompt_len": 1024,
    "prompt_truncation": "left",
    "response_len": 3072,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": None,
    "eval_data": "AIME 2024",
    "eval_before_training": True,
    "eval_steps": 2,
    "eval_samples": 1,
    "eval_temperature": 1.0,
    "epochs": 100,
    "save_steps": 50,
    "resume": False,
    "data": "DAPO-Math-17K (processed) + MATH (lighteval) levels 3-5, concatenated, not deduplicated",
    "prompt": _OFFICIAL_PROMPT,
    "verifier": "official",
    # veRL's rollout defaults and the official run script: max_num_batched_tokens = prompt + response
    "engine_max_num_seqs": 1024,
    "engine_batched_tokens": 4096,
    "engine_gpu_memory": 0.85,
}
_MEDS_KNOBS = [k for k in MEDS_RUN if k.startswith("meds_")]


def _without(run: dict[str, Any], keys) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in set(keys)}


# The baselines: the MEDS run with the values each official baseline run changes.
DAPO_RUN = {**_without(MEDS_RUN, _MEDS_KNOBS), "meds": False}
GRPO_RUN = {
    # engine_batched_tokens: not recorded for the GRPO runs (their responses are longer)
    **_without(DAPO_RUN, ["filter_refill", "lr_warmup_granularity", "engine_batched_tokens"]),
    "dynamic_filtering": None,
    "overlong": None,
    "clip": (0.2, 0.2),
    "dual_clip": 3.0,
    "kl_loss": 0.001,
    "kl_estimator": "k3",
    "kl_loss_agg": "seq-mean-token-mean",
    "loss_agg": "seq-mean-token-mean",
    "response_len": 7168,
    "minibatch": 512,
    "updates_per_step": 16,
    "weight_decay": 0.01,
    "lr_warmup": 0,
    "eval_temperature": 0.0,
}
GRPO_ENTROPY_RUN = {
    **GRPO_RUN,
    "dual_clip": 10.0,
    "response_len": 3072,
    "minibatch": 256,
    "updates_per_step": 32,
    "weight_decay": 0.1,
    "lr_warmup": 10,
    "lr_warmup_granularity": "once per training step",
    "entropy_bonus": (0.4, 2.0),
}
OFFICIAL: dict[str, dict[str, Any]] = {
    "meds": MEDS_RUN,
    "dapo": DAPO_RUN,
    "grpo": GRPO_RUN,
    "grpo_entropy": GRPO_ENTROPY_RUN,
}
