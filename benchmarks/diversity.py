"""What the train/div/* metrics cost per training step: `group_diversity` on every group of
a step (P prompts x n rollouts, d-dim features, final answers, verdicts) and the trainer's
average over the step's samples.

    python benchmarks/diversity.py                       # P=512, n=16, d=14 (the paper's step)
    python benchmarks/diversity.py --prompts 64 --samples 8

With the vllm feature source each engine computes its groups' metrics as they finish, while
other prompts still generate, so only the averaging is on the step's critical path; with the
actor source the trainer computes them all. Both figures are printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from openrlhf_meds.meds.diversity import group_diversity


def make_step(rng, prompts: int, samples: int, dim: int):
    """Features (a few clusters per group, some rollouts without a box), answers, verdicts."""
    groups = []
    for _ in range(prompts):
        centres = rng.normal(size=(3, dim))
        which = rng.integers(0, 3, samples)
        feats = (centres[which] + 0.05 * rng.normal(size=(samples, dim))).astype(np.float32)
        feats[rng.random(samples) < 0.1] = np.nan  # no \boxed{}: no feature, no answer
        answers = [None if np.isnan(f).all() else str(int(w) + 10) for f, w in zip(feats, which)]
        correct = np.array([a == "10" for a in answers])
        groups.append((feats, answers, correct))
    return groups


class _Experience:  # the one attribute diversity_metrics reads
    def __init__(self, info):
        self.info = info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--dim", type=int, default=14)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():  # OpenRLHF imports flash-attn: CPU mode's stand-in
        from openrlhf_meds.cpu import patches

        patches.install()
    from openrlhf_meds.integration.trainer import diversity_metrics

    rng = np.random.default_rng(0)
    groups = make_step(rng, args.prompts, args.samples, args.dim)

    best_groups = best_mean = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        values = [group_diversity(f, a, c) for f, a, c in groups]
        best_groups = min(best_groups, time.perf_counter() - t0)
        # As the trainer sees them: each sample carries its group's values (meds_div_*).
        info = {
            f"meds_div_{name}": torch.tensor([v[name] for v in values for _ in range(args.samples)])
            for name in values[0]
        }
        t0 = time.perf_counter()
        metrics = diversity_metrics([_Experience(dict(info))])
        best_mean = min(best_mean, time.perf_counter() - t0)

    n = args.prompts * args.samples
    print(f"step: {args.prompts} prompts x {args.samples} rollouts, {args.dim}-dim features ({n} rollouts)")
    print("| part | where it runs | ms per step | us per group |")
    print("|---|---|---|---|")
    print(
        f"| group_diversity, all groups | engines, off the critical path (vllm source); trainer (actor source) "
        f"| {best_groups * 1e3:.1f} | {best_groups / args.prompts * 1e6:.0f} |"
    )
    print(f"| average of the step's samples | trainer | {best_mean * 1e3:.2f} | |")
    print("metrics:", {k: round(v, 3) for k, v in metrics.items()})


if __name__ == "__main__":
    main()
