"""The demo task: the largest of three distinct digits, answered in \\boxed{} (generated, no download).

    write_task(out_dir, seed)   SFT jsonl (prompt + answer) and RL prompt jsonl
                                (prompt + label) for OpenRLHF's `train_sft` / `train_ppo_ray`
    write_split(out_dir, ...)   distinct problems for RL and held-out ones for `openrlhf_meds.eval`
    reward_func(...)            the rule-based verifier; this file is the reward file:
                                `--reward.remote_url <path of this file>` (REWARD_FILE)

Prompts are complete ChatML strings asking, in Qwen2.5-Math's words, for the final answer
within \\boxed{} (no system turn: on CPU every token pays for Qwen's 151,936-way logits), so
neither trainer needs a chat template (`--data.input_template {}` for SFT, nothing for GRPO).
Answers restate the digits and box the largest ("max(3, 7, 5) = \\boxed{7}"): the first answer
token after `\\boxed{` is where the model decides, which is what MEDS reads.

The task fits MEDS's premise (`sft.measure_start` measures it on the SFT'd model, the tests
check it): every answer is one digit, one Qwen token, so that token is the whole answer and a
rollout's feature tells its answer apart (with answers of several digits, as in sums, it would
only see the first digit); a tiny model learns the format in a few minutes of SFT and then
picks the right digit in about a quarter of its rollouts, so most groups of 8 are mixed; and its
wrong answers repeat (mostly one of the two other digits, or the same stray one).
The verdict is `openrlhf_meds.verify.score` (math-verify on the last box, in worker processes
with a hard timeout). This file is also loaded on its own by OpenRLHF (spec_from_file_location),
so it imports the package absolutely, and torch only inside `reward_func`.
"""

from __future__ import annotations

import itertools
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


DIGITS = 3  # distinct digits per problem


def problems() -> list[tuple[int, ...]]:
    """Every problem of the task: ordered triples of distinct digits."""
    return list(itertools.permutations(range(10), DIGITS))


def answer_space() -> list[str]:
    """The task's distinct answers (the largest of three distinct digits: 2..9)."""
    return sorted({str(max(p)) for p in problems()}, key=int)


def make_problem(digits: tuple[int, ...]) -> tuple[str, int, str]:
    """One problem: (question, answer, worked answer "max(a, b, c) = \\boxed{m}")."""
    listed = ", ".join(map(str, digits))
    question = f"Which is the largest of {', '.join(map(str, digits[:-1]))} and {digits[-1]}?"
    return question, max(digits), f"max({listed}) = \\boxed{{{max(digits)}}}"


def make_dataset(seed: int, n: int) -> list[dict]:
    """n problems drawn from `problems()`, a function of (seed, n) only: {prompt, solution, label}."""
    if n < 1:
        raise ValueError(f"make_dataset: need n >= 1, got n={n}")
    rng, pool = random.Random(seed), problems()
    rows = []
    for _ in range(n):
        question, answer, solution = make_problem(rng.choice(pool))
        rows.append({"prompt": format_prompt(question), "solution": solution, "label": str(answer)})
    return rows


def write_task(out_dir: str, seed: int = 0, n_sft: int = 4000, n_rl: int = 512) -> dict:
    """Write `sft.jsonl` (keys prompt, response) and `prompts.jsonl` (keys prompt, label).

    RL prompts use another seed stream than the SFT data. Returns the paths, with the reward
    file, as {"sft": ..., "prompts": ..., "reward": REWARD_FILE}. SFT flags: `--data.input_key
    prompt --data.output_key response --data.input_template {}`; GRPO flags: `--data.input_key
    prompt --data.label_key label`.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"sft": os.path.join(out_dir, "sft.jsonl"), "prompts": os.path.join(out_dir, "prompts.jsonl")}
    with open(paths["sft"], "w") as f:
        for row in make_dataset(seed, n_sft):
            f.write(json.dumps({"prompt": row["prompt"], "response": row["solution"] + EOS}) + "\n")
    with open(paths["prompts"], "w") as f:
        for row in make_dataset(seed + 1_000_003, n_rl):
            f.write(json.dumps({"prompt": row["prompt"], "label": row["label"]}) + "\n")
    return {**paths, "reward": REWARD_FILE}


def write_split(out_dir: str, n_train: int, n_heldout: int, seed: int = 1234) -> dict:
    """Distinct problems for RL and for evaluation: `train.jsonl` (n_train) and `heldout.jsonl`
    (the next n_heldout, none of them trained on by RL; the SFT data draws from all of them).

    Every row has `prompt`/`label` (GRPO's keys) and `id`/`problem`/`answer` (`python -m
    openrlhf_meds.eval --template raw`, the prompt being complete). Returns {"train", "heldout"}.
    """
    pool = problems()
    if n_train < 1 or n_heldout < 0 or n_train + n_heldout > len(pool):
        raise ValueError(f"write_split: need 1 <= n_train and n_train + n_heldout <= {len(pool)} distinct problems")
    random.Random(seed).shuffle(pool)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, rows in (("train", pool[:n_train]), ("heldout", pool[n_train : n_train + n_heldout])):
        paths[name] = os.path.join(out_dir, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            for digits in rows:
                question, answer, _ = make_problem(digits)
                prompt, answer = format_prompt(question), str(answer)
                row = {
                    "id": ",".join(map(str, digits)),
                    "prompt": prompt,
                    "label": answer,
                    "problem": prompt,
                    "answer": answer,
                }
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
