"""`python -m openrlhf_meds.data prepare`: the official runs' training data as prompt/label JSONL.

    python -m openrlhf_meds.data prepare --dapo PATH_OR_NAME --math PATH_OR_NAME --levels 3-5 \
        [--dedup] [--seed S] [--drop-unknown-level] --out FILE.jsonl

Prints the counts of each source and of the result; bad input is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from .prepare import DataError, parse_levels, prepare, summary


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command, `prepare`."""
    parser = argparse.ArgumentParser(prog="python -m openrlhf_meds.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "prepare",
        help="DAPO-Math-17K + MATH levels 3-5 as prompt/label JSONL",
        description="Write the training data of the official MEDS runs: DAPO rows, then MATH rows, each "
        '{"prompt": problem text, "label": answer} (the recipes\' --data.input_key prompt --data.label_key label).',
    )
    src = "a .jsonl/.json/.parquet file, a directory of them, or a hub dataset NAME[:CONFIG] (its train split)"
    p.add_argument("--dapo", metavar="PATH_OR_NAME", help=f"DAPO-Math-17K, original or processed layout: {src}")
    p.add_argument("--math", metavar="PATH_OR_NAME", help=f"MATH in the lighteval layout: {src}")
    p.add_argument("--levels", default="3-5", help="MATH levels kept, a range or a list: 3-5, 3,4,5 (default 3-5)")
    p.add_argument(
        "--drop-unknown-level",
        action="store_true",
        help='drop MATH rows whose level cannot be read ("Level ?"); by default they are kept',
    )
    p.add_argument(
        "--dedup",
        action="store_true",
        help="drop rows whose problem text (NFKC, whitespace collapsed) was seen before; the first is kept",
    )
    p.add_argument("--seed", type=int, help="shuffle the rows with this seed (default: no shuffle, source order)")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="the JSONL file to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        result = prepare(
            dapo=args.dapo,
            math=args.math,
            levels=parse_levels(args.levels),
            dedup=args.dedup,
            seed=args.seed,
            drop_unknown_level=args.drop_unknown_level,
            out=args.out,
            progress=not args.no_progress,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary(result, args.out, args.drop_unknown_level, args.dedup)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
