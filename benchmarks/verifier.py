"""How `openrlhf_meds.verify.score` behaves on the shared benchmark files, and what it costs.

    python benchmarks/verifier.py                         # math500 + minerva from ../shared/eval/benchmarks
    python benchmarks/verifier.py --data-dir DIR --datasets math500

1. Reference solutions against their own labels: score(solution, answer) with mode="math_verify"
   and mode="official", and OpenRLHF's `grade_answer(extract_boxed_answer(solution), answer)`;
   the share that scores 1, and each failure.
2. Disagreement between the three on the same data, on the reference solutions and on answers
   rewritten from the labels: equivalent forms (\\dfrac, a/b, decimals, "x = ", thousands
   separators, \\times 10^{}) and wrong ones (an integer + 1, an inverted fraction, the next
   problem's answer).
3. Time per call: `score` one call at a time from a thread (mean, p50, p99), `score_batch`
   (per call), and for comparison math-verify in-process (no timeout), mode="official" and
   `grade_answer`. Workers are restarted and the cache cleared before each timed pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import sys
import threading
import time
from collections import Counter
from decimal import Decimal

from openrlhf_meds import verify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(data_dir: str, name: str) -> list[dict]:
    with open(os.path.join(data_dir, f"{name}.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def openrlhf_grader():
    """OpenRLHF's (extract_boxed_answer, grade_answer), loaded from its file: importing
    `openrlhf.utils` would pull in torch and DeepSpeed."""
    spec = importlib.util.find_spec("openrlhf")
    path = os.path.join(spec.submodule_search_locations[0], "utils", "math_utils.py")
    mod_spec = importlib.util.spec_from_file_location("openrlhf_math_utils", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.extract_boxed_answer, mod.grade_answer


def grade(extract, grade_answer, response: str, label: str) -> float:
    try:
        return float(bool(grade_answer(extract(response), label)))
    except Exception:
        return 0.0


_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\d?frac\{(\d+)\}\{(\d+)\}")
_E = re.compile(r"(-?\d+(?:\.\d+)?)e([-+]?\d+)")


def _terminating(den: int) -> bool:
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def rewrites(label: str, next_label: str) -> list[tuple[str, str, bool]]:
    """(kind, answer, equal to the label?) for the rewrites that apply to `label`."""
    out = []
    if "\\frac" in label and "\\dfrac" not in label:
        out.append(("\\frac -> \\dfrac", label.replace("\\frac", "\\dfrac"), True))
    m = _FRAC.fullmatch(label)
    if m:
        sign, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        out.append(("\\frac{a}{b} -> a/b", f"{sign}{a}/{b}", True))
        if _terminating(b):
            out.append(("\\frac{a}{b} -> decimal", sign + format(Decimal(a) / Decimal(b), "f"), True))
        if a != b and a != 0:
            out.append(("\\frac{a}{b} -> \\frac{b}{a} (wrong)", f"{sign}\\frac{{{b}}}{{{a}}}", False))
    if _INT.fullmatch(label):
        n = int(label)
        if abs(n) >= 1000:
            out.append(("integer -> 1,000 separators", f"{n:,}", True))
        out.append(("integer -> x = integer", f"x = {n}", True))
        out.append(("integer -> integer + 1 (wrong)", str(n + 1), False))
    m = _E.fullmatch(label)
    if m:
        out.append(("m e k -> m \\times 10^{k}", f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}", True))
    if next_label.strip() != label.strip():
        out.append(("the next problem's answer (wrong)", next_label, False))
    return [(kind, answer, equal) for kind, answer, equal in out if answer]


def agreement(rows: list[dict], extract, grade_answer) -> dict:
    responses, labels = [r["solution"] for r in rows], [r["answer"] for r in rows]
    before = verify.stats()["timeouts"]
    mv = verify.score_batch(responses, labels)
    timeouts = verify.stats()["timeouts"] - before
    off = verify.score_batch(responses, labels, mode="official")
    ga = [grade(extract, grade_answer, s, a) for s, a in zip(responses, labels)]
    return {"math_verify": mv, "official": off, "grade_answer": ga, "timeouts": timeouts}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def part1(datasets: dict, extract, grade_answer) -> dict:
    print("## 1. Reference solutions scored against their own labels\n")
    print("| dataset | problems | math_verify | official | grade_answer | last box == label (as text) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    verdicts, failures = {}, []
    for name, rows in datasets.items():
        v = agreement(rows, extract, grade_answer)
        verdicts[name] = v
        same = sum(verify.extract_boxed(r["solution"]) == r["answer"] for r in rows)
        n = len(rows)
        print(
            f"| {name} | {n} | {pct(sum(v['math_verify']) / n)} | {pct(sum(v['official']) / n)} "
            f"| {pct(sum(v['grade_answer']) / n)} | {pct(same / n)} |"
        )
        for i, r in enumerate(rows):
            for who in ("math_verify", "official", "grade_answer"):
                if v[who][i] < 0.5:
                    failures.append((name, r["id"], who, verify.extract_boxed(r["solution"]), r["answer"]))
    print("\nFailures (dataset, id, verifier, last box, label):\n")
    for f in failures:
        print(f"- {f[0]} {f[1]} {f[2]}: box {f[3]!r} vs label {f[4]!r}")
    if not failures:
        print("none")
    return verdicts


def part2(datasets: dict, verdicts: dict, extract, grade_answer) -> None:
    print("\n## 2. Disagreement with mode=official and with OpenRLHF's grade_answer\n")
    print(
        "| pairs | n | math_verify accepts | official accepts | grade_answer accepts | mv != official "
        "| mv != grade_answer | mv timeouts |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def row(title, mv, off, ga, timeouts="-"):
        n = len(mv)
        dis_off = sum(a != b for a, b in zip(mv, off)) / n
        dis_ga = sum(a != b for a, b in zip(mv, ga)) / n
        print(
            f"| {title} | {n} | {pct(sum(mv) / n)} | {pct(sum(off) / n)} | {pct(sum(ga) / n)} "
            f"| {pct(dis_off)} | {pct(dis_ga)} | {timeouts} |"
        )

    for name, v in verdicts.items():
        row(f"{name}: reference solutions", v["math_verify"], v["official"], v["grade_answer"], v["timeouts"])
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for rows in datasets.values():
        for i, r in enumerate(rows):
            for kind, answer, _ in rewrites(r["answer"], rows[(i + 1) % len(rows)]["answer"]):
                by_kind.setdefault(kind, []).append((f"\\boxed{{{answer}}}", r["answer"]))
    examples = {}
    for kind, pairs in by_kind.items():
        responses, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        before = verify.stats()["timeouts"]
        mv = verify.score_batch(responses, labels)
        timeouts = verify.stats()["timeouts"] - before
        off = verify.score_batch(responses, labels, mode="official")
        ga = [grade(extract, grade_answer, r, lab) for r, lab in pairs]
        row(kind, mv, off, ga, timeouts)
        examples[kind] = [(r, lab, m, o, g) for (r, lab), m, o, g in zip(pairs, mv, off, ga) if not m == o == g][:3]
    print("\nExamples of disagreement (answer, label: math_verify / official / grade_answer):\n")
    for kind, ex in examples.items():
        for r, lab, m, o, g in ex:
            print(f"- {kind}: {verify.extract_boxed(r)!r} vs {lab!r}: {m:.0f} / {o:.0f} / {g:.0f}")


def _summary(times: list[float]) -> str:
    times = sorted(times)
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    return f"{1000 * statistics.mean(times):.2f} | {1000 * statistics.median(times):.2f} | {1000 * p99:.2f}"


def part3(datasets: dict, extract, grade_answer) -> None:
    rows = [r for rs in datasets.values() for r in rs]
    responses, labels = [r["solution"] for r in rows], [r["answer"] for r in rows]
    ints = [
        bool(_INT.fullmatch(lab) and _INT.fullmatch(verify.extract_boxed(s) or "")) for s, lab in zip(responses, labels)
    ]
    print(f"\n## 3. Time per call ({len(rows)} reference solutions, {sum(ints)} of them integer pairs)\n")
    print("| how | mean ms | p50 ms | p99 ms | timeouts |")
    print("| --- | ---: | ---: | ---: | ---: |")

    def fresh():  # new workers (empty label caches), empty verdict cache
        verify.shutdown()
        verify.clear_cache()
        verify.warmup()
        return verify.stats()["timeouts"]

    def line(title, times, before=None):
        timeouts = "-" if before is None else verify.stats()["timeouts"] - before
        print(f"| {title} | {_summary(times)} | {timeouts} |")

    before = fresh()
    times: list[float] = []

    def loop():
        for s, lab in zip(responses, labels):
            t = time.perf_counter()
            verify.score(s, lab)
            times.append(time.perf_counter() - t)

    th = threading.Thread(target=loop)
    th.start()
    th.join()
    line("`score`, one call at a time from a thread", times, before)
    line("... integer pairs only (in-process)", [t for t, i in zip(times, ints) if i])
    line("... the other pairs only (worker)", [t for t, i in zip(times, ints) if not i])

    before = fresh()
    t = time.perf_counter()
    verify.score_batch(responses, labels)
    mean = 1000 * (time.perf_counter() - t) / len(rows)
    timeouts = verify.stats()["timeouts"] - before
    workers = verify._pool.default_size()
    print(f"| `score_batch`, all {len(rows)} at once, {workers} workers | {mean:.2f} | - | - | {timeouts} |")

    before = fresh()
    group_times = []
    for i in range(0, len(rows), 64):
        t = time.perf_counter()
        n = len(verify.score_batch(responses[i : i + 64], labels[i : i + 64]))
        group_times.append((time.perf_counter() - t) / n)
    line("`score_batch` in batches of 64 (per call, per batch)", group_times, before)

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from math_verify import verify as mv_verify

    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
    times = []
    for s, lab in zip(responses, labels):
        t = time.perf_counter()
        gold = parse("\\boxed{" + lab + "}", config, parsing_timeout=None)
        pred = parse("\\boxed{" + (verify.extract_boxed(s) or "") + "}", config, parsing_timeout=None)
        mv_verify(gold, pred, timeout_seconds=None)
        times.append(time.perf_counter() - t)
    line("math-verify in-process, main thread, no timeout (for comparison)", times)

    times = []
    for s, lab in zip(responses, labels):
        t = time.perf_counter()
        verify.score(s, lab, mode="official")
        times.append(time.perf_counter() - t)
    line('`score(mode="official")`', times)

    times = []
    for s, lab in zip(responses, labels):
        t = time.perf_counter()
        grade(extract, grade_answer, s, lab)
        times.append(time.perf_counter() - t)
    line("OpenRLHF `grade_answer`, main thread", times)
    print(f"\nstats after the run (all parts): {verify.stats()}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "eval", "benchmarks"))
    ap.add_argument("--datasets", nargs="+", default=["math500", "minerva"])
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" warnings
    datasets = {name: load(args.data_dir, name) for name in args.datasets}
    extract, grade_answer = openrlhf_grader()
    print(
        f"# openrlhf_meds.verify on {', '.join(args.datasets)} ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)\n"
    )
    verdicts = part1(datasets, extract, grade_answer)
    part2(datasets, verdicts, extract, grade_answer)
    if not args.skip_timing:
        part3(datasets, extract, grade_answer)
    c = Counter(verify.stats())
    if c["timeouts"] or c["errors"]:
        print(f"\nnote: {c['timeouts']} timeouts and {c['errors']} errors during the run", file=sys.stderr)


if __name__ == "__main__":
    main()
