"""The MEDS mechanism in seconds: tabular policies, exact policy gradients, the real ErrorMemory.

    bash scripts/run.sh bench meds_mechanism                  # 200 seeds, 40 steps, the grid
    bash scripts/run.sh bench meds_mechanism --quick          # 40 seeds, 20 steps
    bash scripts/run.sh bench meds_mechanism --seeds 400 --steps 60 --plot docs/images/meds_mechanism.png

Each prompt is a softmax policy over a few final answers (one or more right), started skewed:
a given probability of a right answer and one dominant wrong answer. One step samples a group
of n answers per prompt (reward 1 right, 0 wrong), computes GRPO's group-normalised
advantages (`group_advantages`: mean / unbiased std of the group, std + 1e-9 as OpenRLHF's
group_norm) and moves the logits by the exact gradient of the sampled group's objective
(1/n) sum_i A_i log pi(a_i) with respect to the logits (REINFORCE on the sampled group; one
on-policy update per step, where PPO's clipped surrogate has the same gradient), plain SGD.
MEDS is the project's code: `ErrorMemory.step` (HDBSCAN, kNN vote, the reference's defaults)
gives the penalties, `shape_rewards` the shaped rewards. An answer's feature is a fixed random
vector per answer plus Gaussian noise (`separable`), or one vector shared by every answer of
the prompt plus noise (`collapsed`: the memory cannot tell the answers apart). DAPO's dynamic
filtering on raw accuracy (`filter_keeps(..., "raw")`, range 0 1) drops all-right and all-wrong
groups BEFORE the memory and the penalties, as the official run does: they neither enter the
memory nor train.

Arms: GRPO, GRPO+MEDS, DAPO, DAPO+MEDS, on the same sampling random numbers per seed (common
random numbers: with alpha = 0 a MEDS arm is its baseline bit for bit). pass@k is exact from
the policy: 1 - (1 - p_right)^k per prompt, averaged over prompts; the error entropy is the
entropy (nats) of the policy's distribution over wrong answers. Differences MEDS minus baseline
are per seed, with 95% normal intervals over seeds.

Each prompt has its own parameters and its own update (no batch-level normalisation), so a
dropped group changes nothing that an all-equal group's zero advantages would not: DAPO equals
GRPO here, and the shaped-reward filter (`--meds.filter_metric shaped`) would equal GRPO+MEDS.
What the filter changes in this model is which groups MEDS sees: under the raw filter, only
mixed groups.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from openrlhf_meds.meds import ErrorMemory, MedsConfig  # noqa: E402
from openrlhf_meds.meds.shaping import filter_keeps, group_advantages, shape_rewards  # noqa: E402

ARMS = {"GRPO": (False, False), "GRPO+MEDS": (True, False), "DAPO": (False, True), "DAPO+MEDS": (True, True)}
KS = (1, 4, 16)
EPS = 1e-9  # OpenRLHF's group_norm: (r - mean) / (std + 1e-9)


@dataclass(frozen=True)
class Setting:
    """One condition of the model."""

    start_acc: float = 0.05  # the policy's starting probability of a right answer
    alpha: float = 0.1  # MEDS penalty slope (cap beta = 2 x alpha, the official default)
    features: str = "separable"  # or "collapsed"
    answers: int = 8  # final answers per prompt
    right: int = 1  # how many of them are right
    dominant: float = 0.6  # the dominant wrong answer's share of the wrong answers' probability
    n: int = 8  # rollouts per prompt and step
    lr: float = 0.2  # SGD step on the logits
    dim: int = 14  # feature width (the official last 14 layers)
    noise: float = 0.1  # feature noise (per coordinate; answer vectors are N(0, 1))

    def label(self) -> str:
        return f"start {self.start_acc:g}, alpha {self.alpha:g}, {self.features}"


def initial_logits(s: Setting, groups: int) -> np.ndarray:
    """Logits [groups, answers]: answers 0..right-1 right (start_acc split evenly), answer
    `right` the dominant wrong one, the other wrong answers sharing the rest."""
    p = np.empty(s.answers)
    wrong = s.answers - s.right
    p[: s.right] = s.start_acc / s.right
    p[s.right] = (1 - s.start_acc) * (s.dominant if wrong > 1 else 1.0)
    p[s.right + 1 :] = (1 - s.start_acc) * (1 - s.dominant) / max(wrong - 1, 1)
    return np.tile(np.log(p), (groups, 1))


def softmax(theta: np.ndarray) -> np.ndarray:
    z = np.exp(theta - theta.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sample(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Answers [groups, n] by inverse CDF from uniforms u [groups, n]."""
    cdf = np.cumsum(probs, axis=1)
    return np.minimum((u[:, :, None] > cdf[:, None, :]).sum(axis=2), probs.shape[1] - 1)


def step_advantages(answers, right, feats, memory: ErrorMemory | None, dynamic_filter: bool):
    """GRPO advantages [groups, n] of one step, and the penalties [groups, n].

    `answers` [groups, n] answer ids, `right` [answers] bool, `feats` [groups, n, d] the
    rollouts' features (used with a memory). With `dynamic_filter`, groups the raw-score filter
    drops get no memory step, no penalty and zero advantages. With a `memory` (MEDS), the kept
    groups' rollouts go through `ErrorMemory.step` (prompt key = the group's row) and their
    rewards are shaped before the group normalisation."""
    groups, n = answers.shape
    correct = right[answers]
    rewards = correct.astype(np.float64)
    kept = np.ones(groups, bool)
    if dynamic_filter:
        kept = np.array([filter_keeps(r, r, "raw", (0.0, 1.0)) for r in rewards])
    pens = np.zeros((groups, n))
    if memory is not None and kept.any():
        rows = np.nonzero(kept)[0]
        keys = np.repeat(rows, n).tolist()
        _, p = memory.step(keys, feats[rows].reshape(len(rows) * n, -1), correct[rows].reshape(-1))
        pens[rows] = p.reshape(len(rows), n)
    shaped = shape_rewards(rewards, correct, pens) if memory is not None else rewards
    adv = group_advantages(shaped.reshape(-1), n, eps=EPS).reshape(groups, n)
    adv[~kept] = 0.0  # dropped: not in the batch
    return adv, pens


def policy_gradient(probs: np.ndarray, answers: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """d/dlogits of (1/n) sum_i A_i log pi(a_i), per group: (1/n) sum_i A_i (onehot(a_i) - pi)."""
    groups, n = answers.shape
    grad = np.zeros_like(probs)
    np.add.at(grad, (np.repeat(np.arange(groups), n), answers.reshape(-1)), adv.reshape(-1))
    return (grad - probs * adv.sum(axis=1, keepdims=True)) / n


def error_entropy(probs: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each prompt's distribution over its wrong answers."""
    q = probs[:, ~right]
    q = q / q.sum(axis=1, keepdims=True)
    return -(q * np.log(np.maximum(q, 1e-300))).sum(axis=1)


def run(arm: str, s: Setting, seeds: int, prompts: int, steps: int, seed: int = 0) -> dict:
    """One arm: per step (0..steps) and seed, pass@k, error entropy; per step, the fraction of
    all-wrong groups that trained (a non-zero advantage). Replicates = seeds x prompts; a seed's
    value is the mean over its prompts. Same `seed`: same sampling uniforms in every arm."""
    use_meds, dynamic_filter = ARMS[arm]
    groups = seeds * prompts
    sampling = np.random.default_rng([seed, 0])
    feature_rng = np.random.default_rng([seed, 1])
    right = np.arange(s.answers) < s.right
    vectors = feature_rng.normal(size=(groups, s.answers, s.dim))
    if s.features == "collapsed":
        vectors[:] = vectors[:, :1]
    memory = ErrorMemory(MedsConfig(alpha=s.alpha)) if use_meds else None
    theta = initial_logits(s, groups)
    out = {f"pass@{k}": np.empty((steps + 1, seeds)) for k in KS}
    out["error_entropy"] = np.empty((steps + 1, seeds))
    out["all_wrong_trained"] = np.zeros(steps)
    for t in range(steps + 1):
        probs = softmax(theta)
        p_right = probs[:, right].sum(axis=1)
        for k in KS:
            out[f"pass@{k}"][t] = (1 - (1 - p_right) ** k).reshape(seeds, prompts).mean(axis=1)
        out["error_entropy"][t] = error_entropy(probs, right).reshape(seeds, prompts).mean(axis=1)
        if t == steps:
            break
        answers = sample(probs, sampling.random((groups, s.n)))
        # Features come from a stream of their own (drawn in every arm, used by MEDS only), so
        # every arm samples its answers from the same uniforms.
        feats = vectors[np.arange(groups)[:, None], answers] + s.noise * feature_rng.normal(size=(groups, s.n, s.dim))
        adv, _ = step_advantages(answers, right, feats, memory, dynamic_filter)
        all_wrong = ~right[answers].any(axis=1)
        if all_wrong.any():
            # > 1e-6: equal shaped rewards leave rounding residue (x - mean(x, ..., x)) / 1e-9.
            out["all_wrong_trained"][t] = (np.abs(adv[all_wrong]) > 1e-6).any(axis=1).mean()
        theta = theta + s.lr * policy_gradient(probs, answers, adv)
    out["theta"] = theta  # the final logits (the tests compare them bit for bit)
    return out


def interval(diff: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% normal interval of per-seed differences."""
    m = float(diff.mean())
    half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return m, m - half, m + half


def fmt_diff(diff: np.ndarray, scale: float = 100.0) -> str:
    m, lo, hi = (scale * x for x in interval(diff))
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def verdict(diff: np.ndarray) -> str:
    """helps / hurts: the 95% interval excludes 0 (common random numbers make tiny effects
    detectable: under 0.1 point they are called negligible); no difference: it contains 0."""
    m, lo, hi = interval(diff)
    if lo <= 0 <= hi:
        return "no difference"
    return "negligible" if abs(m) < 1e-3 else "helps" if lo > 0 else "hurts"


def arm_table(results: dict, steps: int) -> str:
    """pass@k (%) and error entropy of each arm at a few steps (mean over seeds)."""
    head = (
        "| arm | step | " + " | ".join(f"pass@{k}" for k in KS) + " | error entropy | all-wrong groups trained so far |"
    )
    lines = [head, "| --- | ---: |" + " ---: |" * (len(KS) + 2)]
    for arm, r in results.items():
        trained = r["all_wrong_trained"]
        for t in marks(steps):
            cells = [f"{100 * r[f'pass@{k}'][t].mean():.1f}" for k in KS]
            share = f"{100 * trained[: max(t, 1)].mean():.0f}%" if t else ""
            lines.append(f"| {arm} | {t} | " + " | ".join(cells) + f" | {r['error_entropy'][t].mean():.3f} | {share} |")
    return "\n".join(lines)


def marks(steps: int) -> list[int]:
    return sorted({0, steps // 4, steps // 2, steps})


def diff_table(results: dict, steps: int) -> str:
    """MEDS minus baseline at a few steps, per seed, with 95% intervals."""
    lines = [
        "| comparison | step | " + " | ".join(f"pass@{k} (points)" for k in KS) + " | error entropy (x100) |",
        "| --- | ---: |" + " ---: |" * (len(KS) + 1),
    ]
    for meds, base in (("GRPO+MEDS", "GRPO"), ("DAPO+MEDS", "DAPO")):
        for t in marks(steps)[1:]:
            cells = [fmt_diff(results[meds][f"pass@{k}"][t] - results[base][f"pass@{k}"][t]) for k in KS]
            ent = fmt_diff(results[meds]["error_entropy"][t] - results[base]["error_entropy"][t])
            lines.append(f"| {meds} - {base} | {t} | " + " | ".join(cells) + f" | {ent} |")
    return "\n".join(lines)


def over_run(r: dict, key: str) -> np.ndarray:
    """A metric's mean over steps 1..T, per seed (the area under its curve / T)."""
    return r[key][1:].mean(axis=0)


def grid(base: Setting, seeds: int, prompts: int, steps: int, seed: int) -> str:
    """MEDS minus baseline, each metric's mean over the run, over start accuracy x alpha x
    features (DAPO equals GRPO in this model: one baseline serves both)."""
    lines = [
        "| start acc | alpha | features | GRPO+MEDS - GRPO: pass@1 | pass@16 | error entropy (x100) | "
        "DAPO+MEDS - DAPO: pass@1 | pass@16 | error entropy (x100) |",
        "| ---: | ---: | --- |" + " ---: |" * 6,
    ]
    for acc in (0.05, 0.3):
        baseline = run("GRPO", replace(base, start_acc=acc), seeds, prompts, steps, seed)
        for alpha in (0.05, 0.2):
            for features in ("separable", "collapsed"):
                s = replace(base, start_acc=acc, alpha=alpha, features=features)
                cells = []
                for arm in ("GRPO+MEDS", "DAPO+MEDS"):
                    r = run(arm, s, seeds, prompts, steps, seed)
                    for key in ("pass@1", "pass@16", "error_entropy"):
                        d = over_run(r, key) - over_run(baseline, key)
                        cells.append(f"{fmt_diff(d)} {verdict(d) if key != 'error_entropy' else ''}".strip())
                lines.append(f"| {acc:g} | {alpha:g} | {features} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for arm, r in results.items():
        style = "-" if "MEDS" in arm else "--"
        for ax, key in zip(axes, ("pass@1", "pass@16", "error_entropy")):
            ax.plot(r[key].mean(axis=1), style, label=arm)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("step")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=200, help="independent replicates (each with --prompts prompts)")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per seed")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="40 seeds, 20 steps (a smoke run)")
    ap.add_argument("--no-grid", action="store_true", help="only the four arms at the main setting")
    ap.add_argument("--start-acc", type=float, default=Setting.start_acc)
    ap.add_argument("--alpha", type=float, default=Setting.alpha)
    ap.add_argument("--features", choices=("separable", "collapsed"), default=Setting.features)
    ap.add_argument("--lr", type=float, default=Setting.lr)
    ap.add_argument("--n", type=int, default=Setting.n, help="rollouts per prompt and step")
    ap.add_argument("--seed", type=int, default=0, help="base seed of the random streams")
    ap.add_argument("--plot", default="", help="write the main setting's curves to this PNG")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps = 40, 20
    base = Setting(start_acc=args.start_acc, alpha=args.alpha, features=args.features, lr=args.lr, n=args.n)
    t0 = time.perf_counter()
    results = {arm: run(arm, base, args.seeds, args.prompts, args.steps, args.seed) for arm in ARMS}
    print(
        f"# MEDS mechanism: {base.label()}; {args.seeds} seeds x {args.prompts} prompts, {base.answers} answers "
        f"({base.right} right), {base.n} rollouts, lr {base.lr:g}, {args.steps} steps\n"
    )
    print("pass@k in percent, mean over seeds:\n")
    print(arm_table(results, args.steps))
    print("\nMEDS minus baseline, per seed (95% intervals over seeds):\n")
    print(diff_table(results, args.steps))
    if args.plot:
        plot(results, args.plot, base.label())
    if not args.no_grid:
        g_seeds = max(args.seeds // 2, 2)
        print(
            f"\nGrid: MEDS minus baseline, mean over steps 1..{args.steps} ({g_seeds} seeds x 1 prompt, "
            "95% intervals; helps / hurts: the interval excludes 0, negligible: below 0.1 point):\n"
        )
        print(grid(base, g_seeds, 1, args.steps, args.seed))
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
