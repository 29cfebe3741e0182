"""From scored samples to results: unbiased pass@k per dataset with bootstrap intervals over
problems, mean@n, no-box / truncation / verifier-timeout rates, the macro average over
datasets; markdown tables and a pass@k-against-k plot, one line per model."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

from .passk import pass_at_k

BOOTSTRAP = 1000  # resamples of the problems for the 95% intervals


def read_samples(path: str) -> list[dict]:
    """The rows of a samples.jsonl; a torn last line (an interrupted write) is dropped."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 2:  # only the last line may be torn
                raise ValueError(f"{path}:{i + 1}: corrupt line (not the last one): refusing to guess") from None
    return rows


def drop_torn_tail(path: str) -> int:
    """Cut an unfinished last line (an interrupted write) off `path`, so that appending after a
    resume starts on a line of its own; returns the number of bytes cut."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            f.truncate(keep)
        return len(data) - keep


def _interval(values_per_dataset: list[np.ndarray], rng: np.random.Generator) -> tuple[float, float]:
    """95% bootstrap interval of the mean over datasets of each dataset's mean over problems."""
    reps = np.zeros(BOOTSTRAP)
    for v in values_per_dataset:
        idx = rng.integers(0, len(v), size=(BOOTSTRAP, len(v)))
        reps += v[idx].mean(axis=1)
    reps /= len(values_per_dataset)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


def compute_results(rows: list[dict], ks: list[int], seed: int = 0) -> dict:
    """{model: {dataset | "macro": metrics}} from samples rows (see module docstring).

    Each problem's pass@k uses its own sample count n; a k above a problem's n is skipped.
    """
    by = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))  # model -> dataset -> id -> rows
    for r in rows:
        by[r["model"]][r["dataset"]][r["id"]].append(r)
    results = {}
    for model, datasets in by.items():
        per_model, per_k = {}, defaultdict(list)
        for dataset in sorted(datasets):
            problems = datasets[dataset]
            n = np.array([len(v) for v in problems.values()])
            c = np.array([sum(int(s["verdict"] >= 0.5) for s in v) for v in problems.values()])
            samples = [s for v in problems.values() for s in v]
            m = {
                "problems": len(problems),
                "samples": len(samples),
                "n_min": int(n.min()),
                "mean@n": float(np.mean(c / n)),
                "no_box_rate": float(np.mean([s["extracted"] is None for s in samples])),
                "truncation_rate": float(np.mean([s["finish_reason"] == "length" for s in samples])),
                "verifier_timeouts": int(sum(bool(s.get("timeout")) for s in samples)),
                "pass@k": {},
                "pass@k_ci95": {},
            }
            rng = np.random.default_rng(seed)
            for k in ks:
                if k > n.min():
                    continue
                v = np.array([pass_at_k(int(ni), int(ci), k) for ni, ci in zip(n, c)])
                m["pass@k"][str(k)] = float(v.mean())
                m["pass@k_ci95"][str(k)] = _interval([v], rng)
                per_k[k].append(v)
            per_model[dataset] = m
        rng = np.random.default_rng(seed)
        full = [k for k in ks if len(per_k[k]) == len(datasets)]
        per_model["macro"] = {
            "datasets": sorted(datasets),
            "mean@n": float(np.mean([per_model[d]["mean@n"] for d in datasets])),
            "pass@k": {str(k): float(np.mean([v.mean() for v in per_k[k]])) for k in full},
            "pass@k_ci95": {str(k): _interval(per_k[k], rng) for k in full},
        }
        results[model] = per_model
    return results


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(results: dict) -> str:
    """One table per dataset (and the macro average): a row per model, pass@k in percent with
    the 95% interval, mean@n, no-box, truncation and verifier timeouts."""
    datasets = sorted({d for m in results.values() for d in m if d != "macro"})
    out = []
    for dataset in [*datasets, "macro"]:
        models = [m for m in results if dataset in results[m]]
        ks = sorted({int(k) for m in models for k in results[m][dataset]["pass@k"]})
        title = "macro average over " + ", ".join(datasets) if dataset == "macro" else dataset
        out.append(f"### {title}\n")
        cols = [f"pass@{k}" for k in ks] + ["mean@n"]
        if dataset != "macro":
            cols = ["problems x n"] + cols + ["no box %", "truncated %", "verifier timeouts"]
        out.append("| model | " + " | ".join(cols) + " |")
        out.append("| --- |" + " ---: |" * len(cols))
        for model in models:
            m = results[model][dataset]
            cells = []
            if dataset != "macro":
                cells.append(f"{m['problems']} x {m['n_min']}")
            for k in ks:
                value, (lo, hi) = m["pass@k"].get(str(k)), m["pass@k_ci95"].get(str(k), (math.nan, math.nan))
                cells.append("-" if value is None else f"{_pct(value)} [{_pct(lo)}, {_pct(hi)}]")
            cells.append(_pct(m["mean@n"]))
            if dataset != "macro":
                cells += [_pct(m["no_box_rate"]), _pct(m["truncation_rate"]), str(m["verifier_timeouts"])]
            out.append(f"| {model} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("pass@k: unbiased estimator 1 - C(n-c, k) / C(n, k), in %, with a 95% bootstrap interval over problems.")
    return "\n".join(out) + "\n"


def plot(results: dict, path: str) -> None:
    """pass@k against k (log2 axis), one panel per dataset plus the macro average, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({d for m in results.values() for d in m if d != "macro"}) + ["macro"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, panels):
        for model, per in results.items():
            if dataset not in per or not per[dataset]["pass@k"]:
                continue
            ks = sorted(int(k) for k in per[dataset]["pass@k"])
            y = [100 * per[dataset]["pass@k"][str(k)] for k in ks]
            lo = [100 * per[dataset]["pass@k_ci95"][str(k)][0] for k in ks]
            hi = [100 * per[dataset]["pass@k_ci95"][str(k)][1] for k in ks]
            (line,) = ax.plot(ks, y, marker="o", ms=3, label=model)
            ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_title("macro average" if dataset == "macro" else dataset)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out_dir: str) -> dict[str, str]:
    """results.json, results.md and pass_at_k.png in `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in ("results.json", "results.md", "pass_at_k.png")}
    tmp = paths["results.json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(tmp, paths["results.json"])
    with open(paths["results.md"], "w") as f:
        f.write(markdown(results))
    plot(results, paths["pass_at_k.png"])
    return paths


def load_results(directory: str) -> dict:
    """The results.json an earlier run wrote in `directory` (a clear error if there is none)."""
    path = os.path.join(directory, "results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--compare: {directory} has no results.json (run the evaluation there first)")
    with open(path) as f:
        return json.load(f)
