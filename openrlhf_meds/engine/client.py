"""Ask a MEDS-patched vLLM engine for rollout features (docs/vllm-features.md).

`engine_kwargs` gives the extra engine arguments; `capture` tags a generation so the engine
keeps its feature while it generates (in-stream capture); `rollout_features`
(AsyncLLMEngine) and `rollout_features_sync` (vllm.LLM) collect the features of finished
rollouts: the captured ones, and for rollouts the engine did not capture (untagged, or
responses edited after generation) a re-prefill of prompt + response[:p+1].
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import uuid
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..meds.answer import answer_target
from ..meds.config import MedsConfig
from ..meds.features import feature_width, finish_logits
from . import ARCHITECTURES

# (capture tag, generated ids) of the generations of the group being generated, for code
# that cannot pass them along (OpenRLHF's executor calls the engine's generate once per
# sample, in tasks that inherit this context: integration.rollout_actor). Lives here, in an
# importable module, because Ray pickles actor classes and a ContextVar cannot be pickled.
GROUP_CAPTURES: contextvars.ContextVar[list | None] = contextvars.ContextVar("meds_group_captures", default=None)

PROCESSOR = "openrlhf_meds.engine.vllm_features:MedsFeatureProcessor"
WORKER_EXTENSION = "openrlhf_meds.engine.vllm_features.MedsWorkerWrap"


def feature_window(config: MedsConfig, num_layers: int) -> int:
    """How many per-layer logits l_{L-w+1} .. l_L the feature needs: its width, plus one
    with `layer_diff` (raises ValueError naming the flag if the model is too shallow)."""
    return feature_width(config, num_layers) + int(config.layer_diff)


def engine_kwargs(model: str, config: MedsConfig, trust_remote_code: bool = False) -> dict:
    """Extra vLLM engine arguments that make an engine of `model` (a path or hub id of a
    Qwen2, Qwen3 or Llama causal LM) emit MEDS features:

    - `hf_overrides`: the MEDS subclass of the model's architecture (registered with vLLM
      by this package's `vllm.general_plugins` entry point) and how many layers it keeps
      (`meds_window`; the engine serves any config whose window is not larger, with or
      without `logit_lens`);
    - `logits_processors`: the processor that maps batch rows to feature requests;
    - `worker_extension_cls`: a subclass of OpenRLHF's WorkerWrap (weight sync keeps
      working) with the feature drain.

    Merge them into the engine arguments (replacing OpenRLHF's `worker_extension_cls`);
    other `hf_overrides` keys can be added to the returned dict.
    """
    from transformers import AutoConfig

    from ..versions import check_vllm_version

    check_vllm_version()
    hf_config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    arch = (getattr(hf_config, "architectures", None) or ["<none>"])[0]
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"MEDS vLLM features support the architectures {', '.join(ARCHITECTURES)}; "
            f"{model} is {arch} (compute features with openrlhf_meds.meds.response_features instead)"
        )
    num_layers = hf_config.get_text_config().num_hidden_layers
    return {
        "hf_overrides": {"architectures": [ARCHITECTURES[arch]], "meds_window": feature_window(config, num_layers)},
        "logits_processors": [PROCESSOR],
        "worker_extension_cls": WORKER_EXTENSION,
    }


def batch_limits(
    tensor_parallel_size: int = 1,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_model_len: int | None = None,
    enable_chunked_prefill: bool | None = None,
) -> dict[str, int]:
    """The `max_num_seqs` / `max_num_batched_tokens` a rollout engine is built with: the ones
    given, else what `vllm.LLM` gets on this process's device (vLLM's own per-device table,
    `EngineArgs.get_batch_defaults`, for `UsageContext.LLM_CLASS`: 1,024 / 16,384 on an
    H100, 256 / 8,192 on an A100, 256 x TP / 4,096 x TP on a CPU).

    Why: OpenRLHF builds its engines with `AsyncLLMEngine.from_engine_args`, whose usage
    context has no row in that table, so an engine without these arguments falls back to
    128 running requests and 2,048 batched tokens on any device. Run it in the engine's
    process (it reads the device). Without chunked prefill, a prompt must fit one batch, so
    the default batched tokens are at least `max_model_len` (as vLLM does)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    batched, seqs = EngineArgs.get_batch_defaults(tensor_parallel_size)
    if max_num_batched_tokens is None:
        max_num_batched_tokens = batched[UsageContext.LLM_CLASS]
        if enable_chunked_prefill is False and max_model_len:
            max_num_batched_tokens = max(max_num_batched_tokens, max_model_len)
    if max_num_seqs is None:
        max_num_seqs = min(seqs[UsageContext.LLM_CLASS], max_num_batched_tokens)
    return {"max_num_seqs": int(max_num_seqs), "max_num_batched_tokens": int(max_num_batched_tokens)}


class EngineFeatures(NamedTuple):
    """Features of rollouts from an engine: `values` float32 [rollouts, feature_width] (NaN
    rows for rollouts without an answer) and `reprefilled` bool [rollouts], the rollouts
    whose feature took a re-prefill because the engine had not captured it in-stream."""

    values: np.ndarray
    reprefilled: np.ndarray


def capture(sampling_params):
    """`(params, tag)`: a copy of a generation's SamplingParams (n=1) that makes the patched
    engine capture the rollout's feature while it generates, and the tag to pass to
    `rollout_features` with the finished response."""
    from .vllm_features import CAPTURE_ARG

    tag = f"meds-{uuid.uuid4().hex}"
    params = copy.deepcopy(sampling_params)
    params.extra_args = {**(params.extra_args or {}), CAPTURE_ARG: tag}
    return params, tag


def _requests(tokenizer, prompt_ids_list, response_ids_list):
    """(rollout index, prompt + response[:p+1], p, y*) of every rollout with an answer."""
    if len(prompt_ids_list) != len(response_ids_list):
        raise ValueError("prompt_ids_list and response_ids_list must have the same length")
    jobs = []
    for i, (prompt, response) in enumerate(zip(prompt_ids_list, response_ids_list)):
        found = answer_target(response, tokenizer)
        if found is not None:
            p, y_star = found
            ids = [int(t) for t in prompt] + [int(t) for t in response[: p + 1]]
            jobs.append((i, ids, p, y_star))
    return jobs


def _complete(rank_results) -> list:
    """Rank results `(found, partials)` cut to the tags every tensor-parallel rank found."""
    counts: dict[str, int] = {}
    for found, _ in rank_results:
        for tag in found:
            counts[tag] = counts.get(tag, 0) + 1
    keep = {tag for tag, n in counts.items() if n == len(rank_results)}
    return [
        ([t for t in found if t in keep], [row for t, row in zip(found, partials) if t in keep])
        for found, partials in rank_results
    ]


def _sampling_params(y_star: int, tag: str):
    from vllm import SamplingParams

    from .vllm_features import EXTRA_ARG

    return SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, extra_args={EXTRA_ARG: (tag, y_star)})


def _assemble(n_rollouts, jobs, tags, rank_results, config: MedsConfig, num_layers: int) -> np.ndarray:
    """Sum the tensor-parallel ranks' partials, pick raw or logit-lens logits, cut the
    feature window and finish it (`finish_logits`: `--meds.feature_dtype` rounding after the
    sum, so every rank's float32 partial counts, then the layer diff): the one place the
    engine's feature rows are made. `tags[k]`: the tag of jobs[k]'s partials."""
    out = np.full((n_rollouts, feature_width(config, num_layers)), np.nan, dtype=np.float32)
    if not jobs:
        return out
    window = feature_window(config, num_layers)
    total: dict[str, np.ndarray] = {}
    for found, partials in rank_results:
        for tag, row in zip(found, np.asarray(partials, dtype=np.float32)):
            total[tag] = total[tag] + row if tag in total else row
    missing = [tag for tag in tags if tag not in total]
    if missing:
        raise RuntimeError(
            f"MEDS features: the engine returned no feature for {len(missing)} of {len(jobs)} "
            "re-prefills (was it built with openrlhf_meds.engine.client.engine_kwargs?)"
        )
    both = np.stack([total[tag] for tag in tags])  # [jobs, 2 * kept]: raw | logit lens
    kept = both.shape[1] // 2
    if kept < window:
        raise RuntimeError(
            f"MEDS features: the engine keeps {kept} per-layer logits but the config needs "
            f"{window} (num_layers={num_layers}): build the engine with engine_kwargs of this config"
        )
    logits = both[:, kept:] if config.logit_lens else both[:, :kept]
    out[[job[0] for job in jobs]] = finish_logits(logits[:, kept - window :], config)
    return out


def _plan(tokenizer, prompt_ids_list, response_ids_list, tags):
    """The rollouts with an answer (`_requests`) and what to ask the workers for their
    in-stream captures: `(jobs, tags, asked, wanted)` (`asked`: the tags to pop)."""
    jobs = _requests(tokenizer, prompt_ids_list, response_ids_list)
    if tags is not None and len(tags) != len(response_ids_list):
        raise ValueError(f"rollout_features: {len(tags)} tags for {len(response_ids_list)} rollouts")
    tags = list(tags or [])
    wanted = {tags[i]: [p, y_star] for i, _, p, y_star in jobs if tags and tags[i] is not None}
    return jobs, tags, [t for t in tags if t is not None], wanted


def _split(jobs, tags, captures):
    """Jobs the engine captured (with their capture tags; `captures`: the workers' complete
    results) and those left to re-prefill (with fresh tags)."""
    captured = {t for found, _ in captures for t in found}
    done, redo = [], []
    for job in jobs:
        tag = tags[job[0]] if tags else None
        if tag in captured:
            done.append((job, tag))
        else:
            redo.append((job, f"meds-{uuid.uuid4().hex}"))
    return done, redo


def _result(n, done, redo, rank_results, config, num_layers) -> EngineFeatures:
    both = done + redo
    values = _assemble(n, [j for j, _ in both], [t for _, t in both], rank_results, config, num_layers)
    reprefilled = np.zeros(n, dtype=bool)
    reprefilled[[job[0] for job, _ in redo]] = True
    return EngineFeatures(values, reprefilled)


async def rollout_features(
    llm,
    tokenizer,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    config: MedsConfig,
    num_layers: int,
    tags: Sequence[str | None] | None = None,
) -> EngineFeatures:
    """MEDS features of finished rollouts from a patched `vllm.AsyncLLMEngine` (see
    `engine_kwargs`), each per-layer logit at the precision of `config.feature_dtype`. Safe
    to await from many coroutines at once (each sees only its own requests).

    `response_ids_list[i]`: the generated token ids of rollout i; `num_layers`: the
    model's decoder layers (the engine must have been built with the same config);
    `tags[i]`: rollout i's `capture` tag if it was generated with one (else None). Captured features
    cost no engine work; the others take a re-prefill (`EngineFeatures.reprefilled`).
    """
    from vllm.inputs import TokensPrompt

    jobs, tags, asked, wanted = _plan(tokenizer, prompt_ids_list, response_ids_list, tags)
    captures = _complete(await llm.collective_rpc("meds_pop_captures", args=(asked, wanted))) if asked else []
    done, redo = _split(jobs, tags, captures)

    async def prefill(ids, y_star, tag):
        async for _ in llm.generate(TokensPrompt(prompt_token_ids=ids), _sampling_params(y_star, tag), request_id=tag):
            pass

    await asyncio.gather(*(prefill(ids, y_star, tag) for (_, ids, _, y_star), tag in redo))
    if redo:
        captures += await llm.collective_rpc("meds_pop_features", args=([tag for _, tag in redo],))
    return _result(len(response_ids_list), done, redo, captures, config, num_layers)


def rollout_features_sync(
    llm,
    tokenizer,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    config: MedsConfig,
    num_layers: int,
    tags: Sequence[str | None] | None = None,
) -> EngineFeatures:
    """As `rollout_features`, for a patched offline `vllm.LLM`."""
    from vllm.inputs import TokensPrompt

    jobs, tags, asked, wanted = _plan(tokenizer, prompt_ids_list, response_ids_list, tags)
    captures = _complete(llm.collective_rpc("meds_pop_captures", args=(asked, wanted))) if asked else []
    done, redo = _split(jobs, tags, captures)
    if redo:
        llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for (_, ids, _, _), _ in redo],
            [_sampling_params(y_star, tag) for (_, _, _, y_star), tag in redo],
            use_tqdm=False,
        )
        captures += llm.collective_rpc("meds_pop_features", args=([tag for _, tag in redo],))
    return _result(len(response_ids_list), done, redo, captures, config, num_layers)
