"""The MEDS effect in the paper's setting: DAPO vs DAPO + MEDS (and GRPO, GRPO + MEDS, DAPO + MEDS
with the shaped-reward filter) from the same SFT'd tiny model, replicated, then pass@k of every
final model on held-out and training problems, with 95% bootstrap intervals.

    bash scripts/run.sh bench meds_effect [--steps 12] [--dapo-seeds 0,1,2,3] [--other-seeds 0,1] \\
        [--n 32] [--work-dir outputs/meds_effect] [train_grpo flags for every arm]

The task and the settings are the demo's (`openrlhf_meds/demo`): the largest of three digits,
answered in \\boxed{} (one token per answer, so a rollout's MEDS feature tells its answer apart),
a 16-layer Qwen2 with Qwen's real tokenizer taught the format by OpenRLHF's SFT (its premise
measured and printed: accuracy, mixed groups, repeated errors), 16 training problems, 8 a step,
8 rollouts each. The arms (`ARMS`):

- `dapo`: dynamic filtering on the raw score, clip 0.2/0.28, token-mean loss, no KL;
- `dapo_meds`: the same + MEDS, the official setting (only groups the filter keeps reach MEDS);
- `dapo_meds_shaped`: the same, the filter on the MEDS-shaped reward (`--meds.filter_metric
  shaped`, the official code's `filter_groups.metric=seq_final_reward`): a variant;
- `grpo`, `grpo_meds`: no filter (all-wrong groups reach MEDS), clip 0.2.

Each arm trains once per seed (the DAPO pair on `--dapo-seeds`, the others on `--other-seeds`);
then `python -m openrlhf_meds.eval --cpu` samples every final model and the SFT'd start n times
per problem (T = 1.0). The report gives, per k, MEDS minus its baseline (`CONTRASTS`) with a 95%
bootstrap interval that resamples the seeds (paired: the same seed in both arms) and the
problems, the `train/div/*` curves and the filter's counts per arm, and the wall times.

Writes results.md, results.json and meds_effect.png to the work dir. Resumable: the SFT'd model,
every finished run (`runs/<arm>_seed<s>/done.json`) and every sampled problem (`eval/samples.jsonl`)
are reused when the script is rerun with the same work dir (delete it to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from openrlhf_meds.demo import task as arith  # noqa: E402
from openrlhf_meds.demo.main import PAIRS, PROMPTS, SAMPLES, filter_lines, read_scalars, train  # noqa: E402
from openrlhf_meds.eval.passk import pass_at_k  # noqa: E402

POOL, HELD_OUT = 16, 32  # training problems (8 a step), held-out problems
# arm -> (label, MEDS on, setting, extra train_grpo flags)
ARMS = {
    "dapo": ("DAPO", False, "dapo", []),
    "dapo_meds": ("DAPO + MEDS", True, "dapo", []),
    "dapo_meds_shaped": ("DAPO + MEDS, shaped-reward filter", True, "dapo", ["--meds.filter_metric", "shaped"]),
    "grpo": ("GRPO", False, "grpo", []),
    "grpo_meds": ("GRPO + MEDS", True, "grpo", []),
}
CONTRASTS = [("dapo_meds", "dapo"), ("grpo_meds", "grpo"), ("dapo_meds_shaped", "dapo")]
CURVES = {  # train/div/*: the verifier's scores and answers, logged the same way in every arm
    "train/div/pass@1": "accuracy of the rollouts",
    "train/div/distinct_answers": "distinct answers / rollouts",
    "train/div/repeated_error_rate": "repeated-error rate",
    "train/div/eigen_top1_ratio": "top-1 eigen ratio of the features",
}
BOOTSTRAP = 2000


def run(task: dict, out_dir: str, arm: str, seed: int, steps: int, more=()) -> dict:
    """One training run of `arm` (reused if finished); its scalars and wall time."""
    _, meds, setting, flags = ARMS[arm]
    done = os.path.join(out_dir, "done.json")
    if not os.path.exists(done):
        extra = [*PAIRS[setting]["flags"], *flags, "--train.seed", str(seed), *more]
        start = time.perf_counter()
        train(task, out_dir, steps, meds, extra, save_steps=-1, n_prompts=POOL)
        json.dump({"wall_s": time.perf_counter() - start}, open(done, "w"))
    scalars = {t: dict(p) for t, p in read_scalars(os.path.join(out_dir, "tensorboard")).items()}
    return {"scalars": scalars, **json.load(open(done))}


def correct_counts(samples: list[dict]) -> dict[tuple[str, str], dict[str, int]]:
    """{(model tag, dataset): {problem id: right samples}} from eval's samples.jsonl rows."""
    counts: dict = defaultdict(lambda: defaultdict(int))
    for r in samples:
        counts[(r["model"], r["dataset"])][r["id"]] += int(r["verdict"] >= 0.5)
    return counts


def contrast(counts: dict, arm: str, base: str, seeds: list[int], dataset: str, n: int, ks: list[int], seed=0):
    """MEDS arm minus its baseline per k: {k: (mean difference, (2.5%, 97.5%))}, the mean over
    seeds and problems of pass@k, the interval from a bootstrap over seeds (paired) and problems."""
    ids = sorted(counts[(f"{base}_seed{seeds[0]}", dataset)] or counts[(f"{arm}_seed{seeds[0]}", dataset)])
    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        diff = np.array(
            [
                [
                    pass_at_k(n, counts[(f"{arm}_seed{s}", dataset)].get(i, 0), k)
                    - pass_at_k(n, counts[(f"{base}_seed{s}", dataset)].get(i, 0), k)
                    for i in ids
                ]
                for s in seeds
            ]
        )  # [seeds, problems]
        rs = rng.integers(0, len(seeds), size=(BOOTSTRAP, len(seeds)))
        rp = rng.integers(0, len(ids), size=(BOOTSTRAP, len(ids)))
        reps = np.array([diff[rs[b]][:, rp[b]].mean() for b in range(BOOTSTRAP)])
        lo, hi = np.percentile(reps, [2.5, 97.5])
        out[k] = (float(diff.mean()), (float(lo), float(hi)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="outputs/meds_effect")
    ap.add_argument("--steps", type=int, default=12, help="training steps per run (8 problems x 8 rollouts each)")
    ap.add_argument("--dapo-seeds", default="0,1,2,3", help="seeds of the DAPO pair (dapo, dapo_meds)")
    ap.add_argument("--other-seeds", default="0,1", help="seeds of the other arms")
    ap.add_argument("--n", type=int, default=32, help="evaluation samples per problem")
    args, more = ap.parse_known_args(argv)  # more: train_grpo flags for every arm
    if args.steps < 1 or args.steps * PROMPTS % POOL:
        ap.error(f"--steps must be a positive multiple of {POOL // PROMPTS} (whole passes over the problems)")
    seeds = {
        "dapo": [int(s) for s in args.dapo_seeds.split(",")],
        "other": [int(s) for s in args.other_seeds.split(",")],
    }
    plan = [(arm, s) for arm in ARMS for s in _seeds_of(arm, seeds)]
    work = os.path.abspath(args.work_dir)
    t0 = time.perf_counter()

    from openrlhf_meds.demo.sft import measure_start, sft_tiny_model

    sft_done = os.path.join(work, "sft_done.json")
    if not os.path.exists(sft_done):
        print("[meds_effect] SFT of the tiny model (OpenRLHF's SFT trainer)", flush=True)
        task = sft_tiny_model(os.path.join(work, "sft_run"))
        json.dump(
            {**{k: v for k, v in task.items() if k != "timings"}, "sft_s": task["timings"]["sft"]}, open(sft_done, "w")
        )
    task = json.load(open(sft_done))
    problems = arith.write_split(os.path.join(work, "problems"), POOL, HELD_OUT)
    start = measure_start(task["sft_model"], problems["train"], n=SAMPLES)
    print(f"[meds_effect] the SFT'd start: {start}", flush=True)
    task = {**task, "prompts": problems["train"]}

    runs = {}
    for i, (arm, seed) in enumerate(plan):
        name = f"{arm}_seed{seed}"
        print(f"[meds_effect] run {i + 1}/{len(plan)}: {name}, {args.steps} steps", flush=True)
        runs[name] = run(task, os.path.join(work, "runs", name), arm, seed, args.steps, more)

    from openrlhf_meds.eval.__main__ import main as evaluate
    from openrlhf_meds.eval.report import read_samples

    t_eval = time.perf_counter()
    models = ["--model", task["sft_model"]]
    for name in runs:
        models += ["--model", os.path.join(work, "runs", name)]
    evaluate(
        [*models, "--data", problems["train"], problems["heldout"], "--template", "raw", "--n", str(args.n),
         "--max_tokens", "32", "--cpu", "--out", os.path.join(work, "eval")]
    )  # fmt: skip
    t_eval = time.perf_counter() - t_eval
    counts = correct_counts(read_samples(os.path.join(work, "eval", "samples.jsonl")))
    report(work, runs, counts, seeds, start, args, wall={"eval": t_eval, "total": time.perf_counter() - t0})


def _seeds_of(arm: str, seeds: dict) -> list[int]:
    return seeds["dapo"] if arm in ("dapo", "dapo_meds") else seeds["other"]


def _mean_curve(runs: dict, arm: str, seeds: list[int], tag: str) -> dict[int, float]:
    curves = [runs[f"{arm}_seed{s}"]["scalars"].get(tag, {}) for s in seeds]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {step: sum(c[step] for c in curves) / len(curves) for step in steps}


def report(work: str, runs: dict, counts: dict, seeds: dict, start: dict, args, wall: dict) -> dict:
    """results.md / results.json (pass@k per arm, MEDS minus baseline with intervals, training
    metrics, the filter's counts) and meds_effect.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = args.n
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n]
    datasets = {"heldout": f"held-out problems ({HELD_OUT})", "train": f"training problems ({POOL})"}

    def mean_passk(tag: str, dataset: str) -> dict[int, float]:
        c = counts.get((tag, dataset), {})
        return {k: float(np.mean([pass_at_k(n, v, k) for v in c.values()])) if c else float("nan") for k in ks}

    lines = [
        f"# The MEDS effect: {args.steps} steps per run, n={n}, DAPO pair seeds {args.dapo_seeds}, "
        f"other arms seeds {args.other_seeds}\n",
        f"The SFT'd start on the training problems ({start['prompts']} x {start['n']} rollouts): accuracy "
        f"{start['accuracy']:.0%}, mixed groups {start['mixed']:.0%}, commonest wrong answer "
        f"{start['repeated_error']:.0%} of a problem's wrong rollouts, one first answer token per answer: "
        f"{start['distinct_first_token']}.\n",
    ]
    table: dict = {"pass@k": {}, "contrasts": {}, "start": start}
    for dataset, title in datasets.items():
        lines += [f"## {title}: MEDS minus its baseline, pass@k in points (95% bootstrap interval)\n"]
        lines += [
            "| contrast | seeds | " + " | ".join(f"pass@{k}" for k in ks) + " |",
            "| --- | --- |" + " ---: |" * len(ks),
        ]
        for arm, base in CONTRASTS:
            common = [s for s in _seeds_of(arm, seeds) if s in _seeds_of(base, seeds)]
            d = contrast(counts, arm, base, common, dataset, n, ks)
            table["contrasts"].setdefault(dataset, {})[f"{arm}-{base}"] = {str(k): v for k, v in d.items()}
            cells = [f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for m, (lo, hi) in d.values()]
            label = f"{ARMS[arm][0]} - {ARMS[base][0]}"
            lines.append(f"| {label} | {','.join(map(str, common))} | " + " | ".join(cells) + " |")
        lines += ["", f"pass@k in percent, mean over seeds ({title}):\n"]
        lines += ["| model | " + " | ".join(f"pass@{k}" for k in ks) + " |", "| --- |" + " ---: |" * len(ks)]
        rows = {"SFT'd start": mean_passk("sft", dataset)}
        for arm, (label, *_) in ARMS.items():
            per = [mean_passk(f"{arm}_seed{s}", dataset) for s in _seeds_of(arm, seeds)]
            rows[label] = {k: float(np.mean([p[k] for p in per])) for k in ks}
        for label, pk in rows.items():
            lines.append(f"| {label} | " + " | ".join(f"{100 * pk[k]:.1f}" for k in ks) + " |")
        table["pass@k"][dataset] = {label: {str(k): v for k, v in pk.items()} for label, pk in rows.items()}
        lines.append("")
    lines += ["## training (mean over seeds, first step -> last step)\n"]
    lines += [
        "| metric | " + " | ".join(label for label, *_ in ARMS.values()) + " |",
        "| --- |" + " ---: |" * len(ARMS),
    ]
    for tag, label in CURVES.items():
        cells = []
        for arm in ARMS:
            c = _mean_curve(runs, arm, _seeds_of(arm, seeds), tag)
            cells.append(f"{c[min(c)]:.3f} -> {c[max(c)]:.3f}" if c else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "The dynamic filter and the all-wrong groups, summed over each arm's runs:", "```"]
    merged = {}
    for arm, (label, *_) in ARMS.items():
        merged[label] = defaultdict(dict)
        for s in _seeds_of(arm, seeds):
            for tag, points in runs[f"{arm}_seed{s}"]["scalars"].items():
                for step, v in points.items():
                    merged[label][tag][(s, step)] = v
    lines += [*filter_lines(merged), "```"]
    per_run = ", ".join(f"{name} {r['wall_s']:.0f} s" for name, r in runs.items())
    lines.append(f"\nwall time: runs {per_run}; evaluation {wall['eval']:.0f} s; total {wall['total']:.0f} s")
    text = "\n".join(lines) + "\n"
    open(os.path.join(work, "results.md"), "w").write(text)
    json.dump({**table, "wall": wall, "args": vars(args)}, open(os.path.join(work, "results.json"), "w"), indent=1)
    print(text)

    colors = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (tag, label) in zip(axes.flat, CURVES.items()):
        for arm, (arm_label, *_) in ARMS.items():
            c = _mean_curve(runs, arm, _seeds_of(arm, seeds), tag)
            ax.plot(sorted(c), [c[k] for k in sorted(c)], color=colors[arm], label=arm_label)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax, dataset in zip(axes.flat[4:], datasets):
        for j, (arm, base) in enumerate(CONTRASTS):
            d = table["contrasts"][dataset][f"{arm}-{base}"]
            x = np.log2(ks) + 0.08 * (j - 1)
            mean = [100 * d[str(k)][0] for k in ks]
            err = [
                [100 * (d[str(k)][0] - d[str(k)][1][0]) for k in ks],
                [100 * (d[str(k)][1][1] - d[str(k)][0]) for k in ks],
            ]
            ax.errorbar(
                x, mean, yerr=err, marker="o", capsize=3, color=colors[arm], label=f"{ARMS[arm][0]} - {ARMS[base][0]}"
            )
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(np.log2(ks), [str(k) for k in ks])
        ax.set_title(f"MEDS minus baseline, pass@k (points), {datasets[dataset]}", fontsize=10)
        ax.set_xlabel("k")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"The MEDS effect, tiny Qwen2 on CPU ({args.steps} steps; 95% bootstrap intervals over seeds and problems)"
    )
    fig.tight_layout()
    fig.savefig(os.path.join(work, "meds_effect.png"), dpi=100)
    plt.close(fig)
    return table


if __name__ == "__main__":
    main()
