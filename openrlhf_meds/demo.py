"""CPU demo of the MEDS library, end to end (`bash scripts/run.sh demo`).

Until `python -m openrlhf_meds.train_grpo` lands (issue #5), this runs every piece of the
algorithm layer on a real model and the real Qwen tokenizer: a tiny random Qwen2 (16
layers), arithmetic prompts, rollouts that answer in `\\boxed{}` (scripted: a random tiny
model cannot do arithmetic, so each rollout is the right answer or one of two typical
mistakes, and some never box an answer), a rule-based verifier, answer-token features from
forward hooks, the error memory over several steps, penalties, shaped rewards, GRPO
advantages, and a checkpoint that is reloaded and checked.
"""

from __future__ import annotations

import argparse
import os
import re

import numpy as np
import torch
from tqdm import tqdm

from .meds import ErrorMemory, MedsConfig, group_advantages, shape_rewards
from .meds.features import response_features
from .toy import build_qwen_tokenizer, make_tiny_qwen2

TEMPLATES = [
    "We add {a} and {b} to get {ans}. The answer is \\boxed{{{ans}}}.",
    "{a} plus {b} equals {ans}, so the final answer is $\\boxed{{{ans}}}$.",
    "Let me think. {a} + {b} = {ans}. \\boxed{{{ans}}}",
    "Adding the numbers gives {ans}.",  # never boxes an answer: no feature, no penalty
]


def verifier(response: str, truth: int) -> float:
    """Rule-based score: 1.0 if the last \\boxed{} holds the right integer, else 0.0."""
    found = re.findall(r"\\boxed\{(-?\d+)\}", response)
    return float(bool(found) and int(found[-1]) == truth)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--out", default="runs/demo", help="where the memory checkpoint goes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    print("building the Qwen tokenizer (offline) and a tiny random Qwen2 model ...")
    tokenizer = build_qwen_tokenizer()
    model = make_tiny_qwen2(num_layers=16, seed=args.seed).eval()
    config = MedsConfig()
    memory = ErrorMemory(config)
    problems = [(int(a), int(b)) for a, b in rng.integers(10, 99, size=(args.prompts, 2))]
    skill = rng.uniform(0.2, 0.8, args.prompts)  # chance that a rollout gets the sum right

    history = []
    for step in tqdm(range(args.steps), desc="MEDS steps", unit="step"):
        keys, prompts, responses, scores = [], [], [], []
        for i, (a, b) in enumerate(problems):
            for _ in range(args.rollouts):
                right = rng.random() < skill[i]
                ans = a + b if right else (a - b, a * b)[rng.integers(2)]
                text = TEMPLATES[rng.integers(len(TEMPLATES))].format(a=a, b=b, ans=ans)
                keys.append(f"add-{a}-{b}")
                prompts.append(tokenizer.encode(f"What is {a} + {b}? Put the answer in \\boxed{{}}.\n"))
                responses.append(tokenizer.encode(text))
                scores.append(verifier(text, a + b))
        with torch.no_grad():
            feats = response_features(model, tokenizer, prompts, responses, config)
        correct = np.array(scores) >= 0.5
        sizes, pens = memory.step(keys, feats, correct)
        shaped = shape_rewards(np.array(scores), correct, pens)
        adv = group_advantages(shaped, args.rollouts)
        wrong = ~correct
        history.append(
            dict(
                step=step,
                reward=float(np.mean(scores)),
                shaped=float(shaped.mean()),
                penalty_mean=float(pens[wrong].mean()) if wrong.any() else 0.0,
                frac_penalized=float((pens > 0).mean()),
                no_feature_frac=float(np.isnan(feats).all(axis=1).mean()),
                adv_abs=float(np.abs(adv).mean()),
            )
        )
        tqdm.write(
            "step {step}: reward {reward:.3f} shaped {shaped:.3f} | wrong-rollout penalty {penalty_mean:.3f} "
            "| penalized {frac_penalized:.2f} | no feature {no_feature_frac:.2f}".format(**history[-1])
        )

    stats = memory.stats()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "meds_memory.npz")
    memory.save(path)
    restored = ErrorMemory.load(path)
    assert restored.stats() == stats, "the reloaded memory must equal the saved one"
    first, last = history[0], history[-1]
    print("\nsummary")
    print(f"  features: {feats.shape[1]} per-layer logits of the first answer token")
    print(f"  memory: {stats['vectors']} vectors in {stats['keys']} keys, {stats['clusters_per_key']:.1f} clusters "
          f"per clustered key, noise fraction {stats['noise_frac']:.2f}, {stats['bytes_per_vector']:.0f} B/vector")
    print(f"  penalty on wrong rollouts: step 0 {first['penalty_mean']:.3f} -> step {last['step']} {last['penalty_mean']:.3f} "
          f"(repeated mistakes land in growing clusters)")
    print(f"  rollouts without a boxed answer: {stats.get('rejected_no_feature', 0)} (no feature, no penalty)")
    print(f"  memory checkpoint: {path} (reloaded and checked)")
    if last["penalty_mean"] <= 0:
        raise SystemExit("demo failed: no penalties were applied")


if __name__ == "__main__":
    main()
