"""The OpenRLHF names MEDS replaces (`REPLACED`), what stands in for each, and the runner that
runs OpenRLHF's own script (the versions they were written against: `openrlhf_meds/versions.py`).

`python -m openrlhf_meds.train_grpo` is OpenRLHF 0.11.2's `openrlhf.cli.train_ppo_ray`, run
as `__main__` after the module attributes in `REPLACED` are swapped (the script looks them
up at run time). Each one is a row of patches/README.md with a contract test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import runpy
import sys
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING

from .entropy_advantage import EntropyAdvantage, check_entropy_flags, policy_actor

if TYPE_CHECKING:
    from ..meds.config import MedsConfig

HIERARCHIZE = "openrlhf.utils.config.hierarchize"
PPO_TRAINER = "openrlhf.trainer.ppo_trainer.PPOTrainer"
PPO_TRAINER_ASYNC = "openrlhf.trainer.ppo_trainer_async.PPOTrainerAsync"
ROLLOUT_ACTOR = "openrlhf.trainer.ray.vllm_engine.RolloutRayActor"
POLICY_ACTOR = "openrlhf.trainer.ray.ppo_actor.PolicyModelActor"
EVAL_METRICS = "openrlhf.trainer.ppo_trainer.compute_eval_metrics"
# name -> what stands in for it, and when
REPLACED = {
    HIERARCHIZE: "always: checks OpenRLHF's flags against MEDS's (check_openrlhf_args); prints them for --dry_run",
    EVAL_METRICS: "always: adds the unbiased pass@k and mean@n per eval dataset (eval_metrics.with_pass_at_k)",
    PPO_TRAINER: "MEDS or --meds.diversity on: a factory that starts the MemoryActor shards (MEDS on), then "
    "trainer.MedsPPOTrainer",
    PPO_TRAINER_ASYNC: "--train.async_enable, MEDS or --meds.diversity on: the same factory, then "
    "async_trainer.MedsPPOTrainerAsync (its generator numbers the batches' memory steps)",
    ROLLOUT_ACTOR: "always: rollout_actor.RolloutEngines, engines at full batch (--vllm.max_num_seqs, "
    "--vllm.max_num_batched_tokens); with --meds.feature_source vllm (MEDS or --meds.diversity on) MEDS's engines, "
    "which emit features and feed the memory and the train/div/* metrics",
    POLICY_ACTOR: "--meds.feature_source actor: actor_features.MedsPolicyModelActor (features in the log-prob "
    "forward); --entropy_adv.coef > 0: entropy_advantage.policy_actor on top of the class in use (the advantage bonus)",
}


# Flags this entry point adds to OpenRLHF's --vllm.* group: each rollout engine's batch limits.
# OpenRLHF 0.11.2 has none, and its engines fall back to vLLM's 128 / 2,048 (engine.client.batch_limits).
ENGINE_BATCH_FLAGS = {
    "max_num_seqs": "requests each rollout engine runs at once (default: what vllm.LLM uses on the engine's "
    "device: 1024 on an H100/H200, 256 on an A100; the official MEDS run: 1024)",
    "max_num_batched_tokens": "tokens one engine step may hold, prefill chunks included (default: vllm.LLM's on "
    "the engine's device: 16384 on an H100/H200, 8192 on an A100; the official MEDS run: prompt + response = 4096)",
}


def add_engine_batch_args(parser: argparse.ArgumentParser) -> None:
    """`--vllm.max_num_seqs`, `--vllm.max_num_batched_tokens` (positive ints, default None)."""

    def positive(flag):
        def parse(text: str) -> int:
            try:
                value = int(text)
            except ValueError:
                value = 0
            if value < 1:
                raise argparse.ArgumentTypeError(f"{flag} must be a positive integer, got {text!r}")
            return value

        return parse

    group = parser.add_argument_group("rollout engines at full batch (OpenRLHF has no flag for these)")
    for name, help in ENGINE_BATCH_FLAGS.items():
        group.add_argument(f"--vllm.{name}", type=positive(f"--vllm.{name}"), default=None, help=help)


def engine_batch(args: argparse.Namespace) -> dict[str, int | None]:
    """The engine batch flags parsed by `add_engine_batch_args`, as {name: value}; ValueError
    naming the flags when a step could not hold the running requests."""
    batch = {name: getattr(args, f"vllm.{name}") for name in ENGINE_BATCH_FLAGS}
    seqs, tokens = batch["max_num_seqs"], batch["max_num_batched_tokens"]
    if seqs is not None and tokens is not None and tokens < seqs:
        raise ValueError(
            f"--vllm.max_num_batched_tokens ({tokens}) must be at least --vllm.max_num_seqs ({seqs}): "
            "every running request decodes one token per step"
        )
    return batch


def check_openrlhf_args(flat: argparse.Namespace, config: MedsConfig):
    """MEDS's requirements on OpenRLHF's flags (flat, as parsed); errors name the flag."""

    def get(name):
        return getattr(flat, name, None)

    if not config.enable and not config.diversity:  # plain OpenRLHF
        return
    # The baseline with --meds.diversity still runs MEDS's engines (features, verdicts).
    off = "--meds.enable false" if config.enable else "--meds.diversity false"
    if not (get("reward.remote_url") or get("train.agent_func_path")):
        raise SystemExit(
            "error: MEDS needs the rule-based verifier's scores: pass --reward.remote_url "
            f"(a reward_func .py or a reward server), or {off}"
        )
    if get("train.partial_rollout_enable") and config.feature_source == "vllm":
        raise SystemExit(
            "error: --train.partial_rollout_enable syncs weights into the engines mid-rollout, so a "
            "group's MEDS features could come from newer weights than its rollouts; drop it (plain "
            "--train.async_enable keeps generation and weight syncs apart)"
        )
    if get("train.async_enable") and config.enable and config.feature_source == "vllm":
        from ..memory.actor import RESULT_TTL_STEPS

        # The generator runs ahead of the trainer's fetches by up to (queue + 1) generations of
        # (vllm_generate_batch_size / batch_size) steps; a shard drops results older than that.
        ratio = max(1, (get("rollout.vllm_generate_batch_size") or 1) // max(get("rollout.batch_size") or 1, 1))
        lead = ((get("train.async_queue_size") or 1) + 1) * ratio
        if lead > RESULT_TTL_STEPS:
            raise SystemExit(
                f"error: --train.async_queue_size with --rollout.vllm_generate_batch_size lets the generator run "
                f"{lead} steps ahead of the trainer; MEDS keeps a group's penalties for {RESULT_TTL_STEPS} steps: "
                f"lower them so that (queue size + 1) x (generate batch / batch size) <= {RESULT_TTL_STEPS}"
            )
    if get("train.async_enable") and config.eval_before_training:
        raise SystemExit(
            "error: --meds.eval_before_training is not supported with --train.async_enable (OpenRLHF's "
            "async trainer evaluates in its generator, after training steps only); drop one of them"
        )
    if config.eval_before_training and not get("eval.dataset"):
        raise SystemExit("error: --meds.eval_before_training needs the validation data: pass --eval.dataset")
    if config.feature_source == "vllm" and not get("vllm.num_engines"):
        raise SystemExit("error: --meds.feature_source vllm needs vLLM engines (--vllm.num_engines >= 1)")
    if config.filter_metric == "shaped":  # MedsConfig refuses it with MEDS off
        if not get("algo.dynamic_filtering_enable"):
            raise SystemExit(
                "error: --meds.filter_metric shaped chooses what dynamic filtering decides on: pass "
                "--algo.dynamic_filtering_enable, or drop --meds.filter_metric"
            )
        if tuple(map(float, get("algo.dynamic_filtering_range") or (0, 1))) != (0.0, 1.0):
            raise SystemExit(
                "error: --algo.dynamic_filtering_range is not used by --meds.filter_metric shaped (a group "
                "is dropped when its shaped rewards are all equal): keep the default 0 1, or use "
                "--meds.filter_metric raw"
            )


def replacements(
    config: MedsConfig,
    dry_run: bool = False,
    batch: dict | None = None,
    sync_trainer=None,
    entropy: EntropyAdvantage | None = None,
    on_checked=None,
) -> dict[str, object]:
    """Every object that stands in for a `REPLACED` name in this run, as {dotted name: object}.

    `batch`: the engines' batch limits (`engine_batch`; default: vLLM's for the device).
    `entropy`: the `--entropy_adv.*` settings (no bonus if None). `sync_trainer`: a function
    returning a Ray actor class to run instead of `MedsPPOTrainer` (a subclass of its
    `modified_class`; called here, after CPU mode's patches are in), refused
    where MEDS's sync trainer would not run (MEDS and --meds.diversity off, or
    --train.async_enable). The replaced hierarchize runs every check of OpenRLHF's parsed
    flags, then `on_checked(flat, config, entropy)` if given (the recipe check reads them there),
    then, for `dry_run`, prints them and exits."""
    from openrlhf.utils import config as openrlhf_config

    hierarchize = openrlhf_config.hierarchize
    batch = batch or dict.fromkeys(ENGINE_BATCH_FLAGS)
    meds_trainer = config.enable or config.diversity
    if sync_trainer is not None and not meds_trainer:
        raise SystemExit(
            "error: this run's sync trainer extends MEDS's trainer, which runs only with MEDS on or "
            "--meds.diversity on: keep --meds.diversity on with --meds.enable false"
        )

    def checked_hierarchize(flat):
        for name, value in batch.items():  # shown with OpenRLHF's --vllm.* flags (dry run, recipes)
            setattr(flat, f"vllm.{name}", value)
        check_openrlhf_args(flat, config)
        if entropy is not None:
            check_entropy_flags(flat, entropy)
        if sync_trainer is not None and getattr(flat, "train.async_enable", False):
            raise SystemExit("error: this run's sync trainer extends MEDS's sync trainer: drop --train.async_enable")
        if on_checked is not None:
            on_checked(flat, config, entropy)
        if dry_run:
            print(json.dumps({"openrlhf": vars(flat), "meds": config.to_dict()}, indent=1, default=str))
            raise SystemExit(0)
        return hierarchize(flat)

    from openrlhf.trainer import ppo_trainer

    from .eval_metrics import with_pass_at_k
    from .rollout_actor import RolloutEngines

    replace = {
        HIERARCHIZE: checked_hierarchize,
        EVAL_METRICS: with_pass_at_k(ppo_trainer.compute_eval_metrics),
        ROLLOUT_ACTOR: RolloutEngines(batch),
    }
    if meds_trainer:
        replace.update(_meds_replacements(config, batch, sync_trainer))
    if entropy is not None and entropy.enabled:  # on the policy actor class in use
        from openrlhf.trainer.ray import ppo_actor

        replace[POLICY_ACTOR] = policy_actor(replace.get(POLICY_ACTOR, ppo_actor.PolicyModelActor), entropy)
    return replace


def _meds_replacements(config: MedsConfig, batch: dict, sync_trainer) -> dict[str, object]:
    """MEDS's trainers (which start the memory), and its engines or its policy actor."""
    from ..memory.client import MemoryClient
    from .async_trainer import MedsPPOTrainerAsync
    from .rollout_actor import RolloutEngines
    from .trainer import MedsPPOTrainer

    def start_trainer(trainer_cls, *args, **kwargs):
        """Stands in for PPOTrainer.remote in train(): Ray is up and the engines exist."""
        import ray

        memory = None
        if config.enable:
            memory = MemoryClient.start(config, name="meds-memory")
            where = ", ".join(
                f"shard {p['shard']} on node {p['node_id'][:8]} ({p['ip']}, pid {p['pid']})" for p in memory.placement()
            )
            print(f"MEDS memory ({config.memory_placement} placement): {where}", flush=True)
        trainer = trainer_cls.remote(*args, **kwargs)
        ray.get(trainer.meds_setup.remote(config.to_dict(), memory))
        return trainer

    replace = {
        PPO_TRAINER: SimpleNamespace(remote=partial(start_trainer, sync_trainer() if sync_trainer else MedsPPOTrainer)),
        PPO_TRAINER_ASYNC: SimpleNamespace(remote=partial(start_trainer, MedsPPOTrainerAsync)),
    }
    if config.feature_source == "vllm":
        replace[ROLLOUT_ACTOR] = RolloutEngines(batch, config)
    else:
        from .actor_features import MedsPolicyModelActor

        replace[POLICY_ACTOR] = MedsPolicyModelActor
    return replace


@contextmanager
def replaced(replace: dict[str, object]):
    """Set module attributes given as {"package.module.Name": obj}; restore them on exit."""
    saved = []
    try:
        for dotted, obj in replace.items():
            module_name, _, attr = dotted.rpartition(".")
            module = importlib.import_module(module_name)
            if not hasattr(module, attr):
                raise AttributeError(f"replaced(...): {module_name} has no attribute {attr!r}")
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, obj)
        yield
    finally:
        for module, attr, old in reversed(saved):
            setattr(module, attr, old)


def run_train_ppo_ray(argv: list[str], replace: dict[str, object] | None = None) -> None:
    """Run OpenRLHF's `train_ppo_ray` script as `__main__` with `argv` as its flags, after
    replacing the module attributes in `replace`; sys.argv and the attributes are restored
    afterwards. Starts Ray only if the script does (CPU mode's `run_ppo` starts it first)."""
    saved_argv = sys.argv
    try:
        with replaced(replace or {}):
            sys.argv = ["train_ppo_ray", *argv]
            runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=False)
    finally:
        sys.argv = saved_argv
