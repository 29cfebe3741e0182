"""Check a recipe against an official MEDS run.

    python -m openrlhf_meds.tools.check_recipe RUN [--num_prompts N] [--reason SETTING=WHY ...] -- FLAGS

runs `python -m openrlhf_meds.train_grpo FLAGS --dry_run` (OpenRLHF's own parser and MEDS's
checks; it prints the resolved configuration), then prints a table with one row per official
setting of RUN (`meds`, `dapo`, `grpo`, `grpo_entropy`; `tools/official_runs.py`): the
setting, its official value, this run's value as read from the parsed flags, and whether they
agree. It exits 1, naming the settings, when a value differs without a reason given with
`--reason`, when a reason is given for a value that agrees, or for a setting RUN does not
have. The recipes in examples/scripts/ run it for `DRY_RUN=1`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from .official_runs import OFFICIAL, SETTINGS, Run


@dataclass
class Row:
    """One line of the table."""

    setting: str
    what: str
    official: str
    this_run: str
    same: bool
    reason: str | None = None


def compare(run_name: str, run: Run, reasons: dict[str, str]) -> tuple[list[Row], list[str]]:
    """The rows of `run_name`'s official settings for `run` (in `SETTINGS` order), and the errors: each setting
    that differs without a reason in `reasons` (setting id -> why), each reason for a
    setting that agrees or that the run does not have."""
    official = OFFICIAL[run_name]
    rows, errors = [], []
    for key in (k for k in SETTINGS if k in official):  # the table's order: SETTINGS'
        value = official[key]
        setting = SETTINGS[key]
        got = setting.read(run)
        same = setting.same(value, got)
        show_official = setting.show_official or setting.show
        row = Row(key, setting.what, show_official(value), setting.show(got), same, reasons.get(key))
        rows.append(row)
        if not same and row.reason is None:
            errors.append(f"{key}: official {row.official}, this run {row.this_run}, and no --reason {key}=...")
        if same and row.reason is not None:
            errors.append(f"{key}: a reason is given but the value is the official one ({row.official})")
    for key in sorted(set(reasons) - set(official)):
        errors.append(f"{key}: --reason for a setting the {run_name} run does not have")
    return rows, errors


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table: setting, official value, this run, and the difference."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "\\n")

    lines = ["| setting | official value | this run | |", "| --- | --- | --- | --- |"]
    for r in rows:
        mark = "=" if r.same else (f"differs: {r.reason}" if r.reason else "DIFFERS, no reason given")
        lines.append(f"| {r.setting} ({cell(r.what)}) | {cell(r.official)} | {cell(r.this_run)} | {cell(mark)} |")
    return "\n".join(lines)


def dry_run(flags: list[str]) -> tuple[argparse.Namespace, Any, Any]:
    """Run `train_grpo.main(flags + ["--dry_run"])` and return what its flag checks saw:
    OpenRLHF's parsed flags (flat), the MEDS configuration and the entropy-bonus settings.
    SystemExit other than the dry run's own exit 0 propagates."""
    from .. import train_grpo

    seen: dict[str, Any] = {}
    try:
        train_grpo.main([*flags, "--dry_run"], on_checked=lambda *checked: seen.update(checked=checked))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    if "checked" not in seen:
        raise RuntimeError("the dry run ended before OpenRLHF's flags were checked: nothing to compare")
    sys.stdout.flush()
    return seen["checked"]


def build_parser() -> argparse.ArgumentParser:
    """The command line before `--`: RUN, --num_prompts, --reason (train_grpo's flags follow `--`)."""
    p = argparse.ArgumentParser(
        prog="python -m openrlhf_meds.tools.check_recipe",
        usage="%(prog)s RUN [--num_prompts N] [--reason SETTING=WHY ...] -- TRAIN_GRPO_FLAGS ...",
        description="Dry-run a recipe's train_grpo flags and compare them with an official MEDS run.",
    )
    p.add_argument("run", choices=sorted(OFFICIAL), help="the official run the recipe reproduces")
    p.add_argument("--num_prompts", type=int, help="rows of the training data (the warm-up is a share of them)")
    p.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="SETTING=WHY",
        help="why SETTING differs from the official value (a setting id of the table)",
    )
    return p


def parse_reasons(items: list[str]) -> dict[str, str]:
    """`SETTING=WHY` items as {setting: why}; ValueError naming a malformed or repeated one."""
    reasons: dict[str, str] = {}
    for item in items:
        key, sep, why = item.partition("=")
        key, why = key.strip(), why.strip()
        if not sep or not key or not why:
            raise ValueError(f"--reason {item!r}: expected SETTING=WHY")
        if key in reasons:
            raise ValueError(f"--reason {key}: given twice")
        if key not in SETTINGS:
            raise ValueError(f"--reason {key}: unknown setting (settings: {', '.join(SETTINGS)})")
        reasons[key] = why
    return reasons


def main(argv: list[str] | None = None) -> int:
    """Dry-run the flags, print the table, return 0, or 1 when a setting differs unexplained."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        parser.error("give train_grpo's flags after --")
    split = argv.index("--")
    args, flags = parser.parse_args(argv[:split]), argv[split + 1 :]
    try:
        reasons = parse_reasons(args.reason)
    except ValueError as e:
        parser.error(str(e))
    flat, config, entropy_adv = dry_run(flags)
    run = Run(
        openrlhf=vars(flat),
        meds=dataclasses.asdict(config),
        entropy_adv=entropy_adv,
        num_prompts=args.num_prompts,
    )
    rows, errors = compare(args.run, run, reasons)
    print(f"\nThe official {args.run} run and this one ({len(rows)} settings):\n")
    print(table(rows))
    for note in run.notes:
        print(f"note: {note}")
    if errors:
        print(f"\nerror: {len(errors)} setting(s) of the official {args.run} run:", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    print(f"\nevery setting of the official {args.run} run is reproduced or its difference explained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
