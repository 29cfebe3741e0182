"""What MEDS changes: GRPO and GRPO + MEDS from the same SFT'd tiny model, same seeds, prompts
and steps, on CPU; then pass@k of each final model on held-out prompts.

    bash scripts/run.sh bench meds_effect [--steps 20] [--seeds 0,1] [--lr 1e-3] [--n 32] \\
        [--work-dir outputs/meds_effect] [train_grpo flags for both arms]

The task is the demo's (single-digit sums answered in \\boxed{}, Qwen's real tokenizer, a
16-layer Qwen2 taught the format by OpenRLHF's SFT): after SFT the model gets ~3% of the sums
right and repeats its wrong answers, so most groups are all wrong. Plain GRPO learns nothing from
an all-wrong group (every advantage is 0); MEDS ranks its rollouts by how often their error
recurs. Training: 16 fixed prompts, 8 a step, 8 rollouts each. Evaluation: `python -m
openrlhf_meds.eval --cpu` on the 16 training prompts and on 32 held-out sums (n=32, T=1.0).
Writes results.md, results.json and meds_effect.png to the work dir; SFT and finished runs are
reused when the script is rerun with the same work dir (delete it to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from openrlhf_meds.demo import task as arith  # noqa: E402
from openrlhf_meds.demo.main import PROMPTS, read_scalars, train  # noqa: E402

TRAIN_PROMPTS, HELD_OUT = 16, 32
CURVES = {  # train/div/*: the verifier's scores and answers, logged the same way in both arms
    "train/div/pass@1": "accuracy of the rollouts",
    "train/div/pass@8": "within-group pass@8",
    "train/div/distinct_answers": "distinct answers / rollouts",
    "train/div/repeated_error_rate": "repeated-error rate",
}
TABLE = {**CURVES, "train/div/eigen_top1_ratio": "top-1 eigen ratio of the features"}


def run(task: dict, prompts: str, out_dir: str, meds: bool, seed: int, steps: int, lr: float, more=()) -> dict:
    """One training run (reused if finished); its tensorboard scalars {tag: {step: value}}."""
    done = os.path.join(out_dir, "done.json")
    if not os.path.exists(done):
        extra = ["--train.seed", str(seed), "--actor.adam.lr", str(lr), *more]
        start = time.perf_counter()
        train({**task, "prompts": prompts}, out_dir, steps, meds, extra, save_steps=-1, n_prompts=TRAIN_PROMPTS)
        json.dump({"wall_s": time.perf_counter() - start}, open(done, "w"))
    scalars = {t: dict(p) for t, p in read_scalars(os.path.join(out_dir, "tensorboard")).items()}
    return {"scalars": scalars, **json.load(open(done))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="outputs/meds_effect")
    ap.add_argument("--steps", type=int, default=20, help="GRPO steps per run (8 prompts x 8 rollouts each)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds; each trains both arms")
    ap.add_argument("--lr", type=float, default=1e-3, help="actor learning rate of both arms")
    ap.add_argument("--n", type=int, default=32, help="evaluation samples per prompt")
    args, more = ap.parse_known_args(argv)  # more: train_grpo flags for both arms
    if args.steps * PROMPTS % TRAIN_PROMPTS:
        ap.error(f"--steps must be a multiple of {TRAIN_PROMPTS // PROMPTS} (whole passes over the prompts)")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = os.path.abspath(args.work_dir)
    t0 = time.perf_counter()

    from openrlhf_meds.demo.sft import sft_tiny_model

    sft_done = os.path.join(work, "sft_done.json")
    if not os.path.exists(sft_done):
        print("[meds_effect] SFT of the tiny model (OpenRLHF's SFT trainer)", flush=True)
        task = sft_tiny_model(os.path.join(work, "sft_run"))
        json.dump(
            {**{k: v for k, v in task.items() if k != "timings"}, "sft_s": task["timings"]["sft"]}, open(sft_done, "w")
        )
    task = json.load(open(sft_done))
    prompts = arith.write_split(os.path.join(work, "prompts"), TRAIN_PROMPTS, HELD_OUT)

    runs = {}
    for seed in seeds:
        for arm, meds in (("grpo", False), ("meds", True)):
            name = f"{arm}_seed{seed}"
            print(f"[meds_effect] {name}: {args.steps} steps", flush=True)
            out = os.path.join(work, "runs", name)
            runs[name] = run(task, prompts["train"], out, meds, seed, args.steps, args.lr, more)

    from openrlhf_meds.eval.__main__ import main as evaluate

    t_eval = time.perf_counter()
    models = ["--model", task["sft_model"]]
    for name in runs:
        models += ["--model", os.path.join(work, "runs", name)]
    results = evaluate(
        [*models, "--data", prompts["train"], prompts["heldout"], "--template", "raw", "--n", str(args.n),
         "--max_tokens", "32", "--cpu", "--out", os.path.join(work, "eval")]
    )  # fmt: skip
    t_eval = time.perf_counter() - t_eval
    report(work, runs, results, seeds, args, wall={"eval": t_eval, "total": time.perf_counter() - t0})


def _mean_curve(runs: dict, arm: str, seeds: list[int], tag: str) -> dict[int, float]:
    curves = [runs[f"{arm}_seed{s}"]["scalars"].get(tag, {}) for s in seeds]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {step: sum(c[step] for c in curves) / len(curves) for step in steps}


def report(work: str, runs: dict, results: dict, seeds: list[int], args, wall: dict) -> None:
    """results.md / results.json (pass@k and training metrics per arm) and meds_effect.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = {"grpo": "GRPO", "meds": "GRPO + MEDS"}
    ks = sorted({int(k) for m in results.values() for k in m["heldout"]["pass@k"]})

    def passk(dataset, arm):  # mean over seeds of each run's pass@k
        per = [results[f"{arm}_seed{s}"][dataset] for s in seeds]
        return {k: sum(p["pass@k"][str(k)] for p in per) / len(per) for k in ks}, sum(p["mean@n"] for p in per) / len(
            per
        )

    lines = [
        f"# MEDS effect: {args.steps} GRPO steps, seeds {','.join(map(str, seeds))}, lr {args.lr}, n={args.n}\n",
        "pass@k in percent (mean over seeds); `sft` is the start point of every run.\n",
    ]
    table = {}
    for dataset in ("train", "heldout"):
        lines.append(f"## {dataset} prompts ({TRAIN_PROMPTS if dataset == 'train' else HELD_OUT})\n")
        lines.append("| model | " + " | ".join(f"pass@{k}" for k in ks) + " | mean@n |")
        lines.append("| --- |" + " ---: |" * (len(ks) + 1))
        sft = results["sft"][dataset]
        rows = {"sft": ({k: sft["pass@k"][str(k)] for k in ks}, sft["mean@n"])}
        rows.update({arm: passk(dataset, arm) for arm in arms})
        for name, (pk, mean) in rows.items():
            lines.append(
                f"| {arms.get(name, name)} | " + " | ".join(f"{100 * pk[k]:.1f}" for k in ks) + f" | {100 * mean:.1f} |"
            )
        lines.append("")
        table[dataset] = {name: {"pass@k": pk, "mean@n": mean} for name, (pk, mean) in rows.items()}
    lines.append("## training (mean over seeds, first step -> last step)\n")
    lines.append("| metric | GRPO | GRPO + MEDS |\n| --- | ---: | ---: |")
    for tag, label in TABLE.items():
        cells = []
        for arm in arms:
            c = _mean_curve(runs, arm, seeds, tag)
            cells.append(f"{c[min(c)]:.3f} -> {c[max(c)]:.3f}" if c else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    per_run = ", ".join(f"{name} {r['wall_s']:.0f} s" for name, r in runs.items())
    lines.append(f"\nwall time: runs {per_run}; evaluation {wall['eval']:.0f} s; total {wall['total']:.0f} s")
    text = "\n".join(lines) + "\n"
    open(os.path.join(work, "results.md"), "w").write(text)
    json.dump(
        {"pass@k": table, "wall": wall, "args": vars(args)}, open(os.path.join(work, "results.json"), "w"), indent=1
    )
    print(text)

    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for ax, (tag, label) in zip(axes.flat, CURVES.items()):
        for arm, arm_label in arms.items():
            for s in seeds:
                c = runs[f"{arm}_seed{s}"]["scalars"].get(tag, {})
                ax.plot(sorted(c), [c[k] for k in sorted(c)], color="C1" if arm == "meds" else "C0", alpha=0.25)
            c = _mean_curve(runs, arm, seeds, tag)
            ax.plot(sorted(c), [c[k] for k in sorted(c)], color="C1" if arm == "meds" else "C0", label=arm_label)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    for ax, dataset in zip(axes.flat[4:], ("train", "heldout")):
        for name, color in (("sft", "gray"), ("grpo", "C0"), ("meds", "C1")):
            pk = table[dataset][name]["pass@k"]
            ax.plot(ks, [pk[k] for k in ks], marker="o", color=color, label=arms.get(name, "SFT start"))
        ax.set_xscale("log", base=2)
        ax.set_title(f"pass@k, {dataset} prompts", fontsize=10)
        ax.set_xlabel("k")
        ax.legend(fontsize=8)
    fig.suptitle(f"GRPO vs GRPO + MEDS, tiny Qwen2 on CPU ({args.steps} steps, {len(seeds)} seeds; thin: each seed)")
    fig.tight_layout()
    fig.savefig(os.path.join(work, "meds_effect.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
