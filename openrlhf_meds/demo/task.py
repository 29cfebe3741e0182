"""The demo task: addition of small numbers, answered in \\boxed{} (generated, no download).

    write_task(out_dir, seed)   SFT jsonl (prompt + answer) and RL prompt jsonl
                                (prompt + label) for OpenRLHF's `train_sft` / `train_ppo_ray`
    write_split(out_dir, ...)   distinct sums for RL and held-out ones for `openrlhf_meds.eval`
    reward_func(...)            the rule-based verifier; this file is the reward file:
                                `--reward.remote_url <path of this file>` (REWARD_FILE)

Prompts are complete ChatML strings asking, in Qwen2.5-Math's words, for the final answer
within \\boxed{} (no system turn: on CPU every token pays for Qwen's 151,936-way logits), so
neither trainer needs a chat template (`--data.input_template {}` for SFT, nothing for GRPO).
Answers restate the sum and box it ("37 + 48 = \\boxed{85}"): the first answer token after
`\\boxed{` is where the model decides, which is what MEDS reads. With single-digit operands a
tiny model learns the format in a few minutes of SFT and gets some sums right, many wrong.
The verdict is `openrlhf_meds.verify.score` (math-verify on the last box, in worker processes
with a hard timeout). This file is also loaded on its own by OpenRLHF (spec_from_file_location),
so it imports the package absolutely, and torch only inside `reward_func`.
"""

from __future__ import annotations

import json
import os
import random

from openrlhf_meds.verify import extract_boxed, score_batch
from openrlhf_meds.verify import score as verify_score

INSTRUCTION = "Put your final answer within \\boxed{}."  # Qwen2.5-Math's wording
EOS = "<|endoftext|>"  # Qwen's eos: the SFT answers end with it, so vLLM stops there
REWARD_FILE = os.path.abspath(__file__)


def format_prompt(question: str) -> str:
    """A ChatML prompt up to the assistant's turn (no system turn: every token costs on CPU)."""
    return f"<|im_start|>user\n{question} {INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"


def make_problem(rng: random.Random, max_operand: int) -> tuple[str, int, str]:
    """One problem: (question, answer, worked answer "a + b = \\boxed{a+b}")."""
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    return f"What is {a} + {b}?", a + b, f"{a} + {b} = \\boxed{{{a + b}}}"


def make_dataset(seed: int, n: int, max_operand: int = 99) -> list[dict]:
    """n problems, a function of (seed, n, max_operand) only: {prompt, solution, label}."""
    if n < 1 or max_operand < 1:
        raise ValueError(f"make_dataset: need n >= 1 and max_operand >= 1, got n={n}, max_operand={max_operand}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer, solution = make_problem(rng, max_operand)
        rows.append({"prompt": format_prompt(question), "solution": solution, "label": str(answer)})
    return rows


def write_task(out_dir: str, seed: int = 0, n_sft: int = 4000, n_rl: int = 512, max_operand: int = 99) -> dict:
    """Write `sft.jsonl` (keys prompt, response) and `prompts.jsonl` (keys prompt, label).

    RL prompts use another seed stream than the SFT data. Returns the paths, with the reward
    file, as {"sft": ..., "prompts": ..., "reward": REWARD_FILE}. SFT flags: `--data.input_key
    prompt --data.output_key response --data.input_template {}`; GRPO flags: `--data.input_key
    prompt --data.label_key label`.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"sft": os.path.join(out_dir, "sft.jsonl"), "prompts": os.path.join(out_dir, "prompts.jsonl")}
    with open(paths["sft"], "w") as f:
        for row in make_dataset(seed, n_sft, max_operand):
            f.write(json.dumps({"prompt": row["prompt"], "response": row["solution"] + EOS}) + "\n")
    with open(paths["prompts"], "w") as f:
        for row in make_dataset(seed + 1_000_003, n_rl, max_operand):
            f.write(json.dumps({"prompt": row["prompt"], "label": row["label"]}) + "\n")
    return {**paths, "reward": REWARD_FILE}


def write_split(out_dir: str, n_train: int, n_heldout: int, seed: int = 1234, max_operand: int = 9) -> dict:
    """Distinct sums for RL and for evaluation: `train.jsonl` (n_train) and `heldout.jsonl`
    (the next n_heldout, none of them trained on by RL; the SFT data covers every sum).

    Every row has `prompt`/`label` (GRPO's keys) and `id`/`problem`/`answer` (`python -m
    openrlhf_meds.eval --template raw`, the prompt being complete). Returns {"train", "heldout"}.
    """
    sums = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if n_train < 1 or n_heldout < 0 or n_train + n_heldout > len(sums):
        raise ValueError(f"write_split: need 1 <= n_train and n_train + n_heldout <= {len(sums)} distinct sums")
    random.Random(seed).shuffle(sums)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, rows in (("train", sums[:n_train]), ("heldout", sums[n_train : n_train + n_heldout])):
        paths[name] = os.path.join(out_dir, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            for a, b in rows:
                prompt, answer = format_prompt(f"What is {a} + {b}?"), str(a + b)
                row = {"id": f"{a}+{b}", "prompt": prompt, "label": answer, "problem": prompt, "answer": answer}
                f.write(json.dumps(row) + "\n")
    return paths


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} in `text` (nested braces allowed), None if none closes."""
    return extract_boxed(text)


def score(response: str, label: str) -> float:
    """1.0 if the last \\boxed{} in the response equals the label (math-verify), else 0.0."""
    return verify_score(response, label)


def _response_of(query: str, prompt: str) -> str:
    # The query is prompt + response decoded together; the prompt's own "\boxed{}" must not count.
    if query.startswith(prompt):
        return query[len(prompt) :]
    return query.rsplit("<|im_start|>assistant\n", 1)[-1]


def reward_func(queries: list[str], prompts: list[str], labels: list[str]) -> dict:
    """OpenRLHF's reward-file entry point (`--reward.remote_url <this file>`).

    Returns {"rewards", "scores", "extra_logs": {"boxed"}}; `scores` is the raw verifier score
    (1 correct, 0 wrong; OpenRLHF treats >= 0.5 as correct) and `rewards` equals it (shaping
    happens later, in the experience maker). OpenRLHF 0.11.2 calls this with one query at a
    time and wraps each value as `torch.tensor([value])`, so one query gives 0-d tensors.
    """
    import torch

    responses = [_response_of(q, p) for q, p in zip(queries, prompts)]
    scores = torch.tensor(score_batch(responses, labels)).squeeze(0)
    boxed = torch.tensor([float(last_boxed(r) is not None) for r in responses]).squeeze(0)
    return {"rewards": scores, "scores": scores.clone(), "extra_logs": {"boxed": boxed}}
