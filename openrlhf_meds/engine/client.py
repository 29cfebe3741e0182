"""Ask a MEDS-patched vLLM engine for rollout features (docs/vllm-features.md).

`engine_kwargs` gives the extra engine arguments; `rollout_features` (AsyncLLMEngine) and
`rollout_features_sync` (vllm.LLM) re-prefill prompt + response[:p+1] of every rollout that
has an answer and collect the per-layer logits the engine computed (see vllm_features).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import numpy as np

from ..meds.answer import answer_target
from ..meds.config import MedsConfig
from ..meds.features import feature_width, finish_logits
from . import ARCHITECTURES

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

    from .vllm_features import check_vllm_version

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


def _requests(tokenizer, prompt_ids_list, response_ids_list):
    """(rollout index, prompt + response[:p+1], y*, tag) of every rollout with an answer."""
    if len(prompt_ids_list) != len(response_ids_list):
        raise ValueError("prompt_ids_list and response_ids_list must have the same length")
    jobs = []
    for i, (prompt, response) in enumerate(zip(prompt_ids_list, response_ids_list)):
        found = answer_target(response, tokenizer)
        if found is not None:
            p, y_star = found
            ids = [int(t) for t in prompt] + [int(t) for t in response[: p + 1]]
            jobs.append((i, ids, y_star, f"meds-{uuid.uuid4().hex}"))
    return jobs


def _sampling_params(y_star: int, tag: str):
    from vllm import SamplingParams

    from .vllm_features import EXTRA_ARG

    return SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, extra_args={EXTRA_ARG: (tag, y_star)})


def _assemble(n_rollouts, jobs, rank_results, config: MedsConfig, num_layers: int) -> np.ndarray:
    """Sum the tensor-parallel ranks' partials, pick raw or logit-lens logits, cut the
    feature window and finish it (`finish_logits`: `--meds.feature_dtype` rounding after the
    sum, so every rank's float32 partial counts, then the layer diff): the one place the
    engine's feature rows are made."""
    out = np.full((n_rollouts, feature_width(config, num_layers)), np.nan, dtype=np.float32)
    if not jobs:
        return out
    window = feature_window(config, num_layers)
    total: dict[str, np.ndarray] = {}
    for found, partials in rank_results:
        for tag, row in zip(found, np.asarray(partials, dtype=np.float32)):
            total[tag] = total[tag] + row if tag in total else row
    missing = [tag for _, _, _, tag in jobs if tag not in total]
    if missing:
        raise RuntimeError(
            f"MEDS features: the engine returned no feature for {len(missing)} of {len(jobs)} "
            "re-prefills (was it built with openrlhf_meds.engine.client.engine_kwargs?)"
        )
    both = np.stack([total[tag] for _, _, _, tag in jobs])  # [jobs, 2 * kept]: raw | logit lens
    kept = both.shape[1] // 2
    if kept < window:
        raise RuntimeError(
            f"MEDS features: the engine keeps {kept} per-layer logits but the config needs "
            f"{window} (num_layers={num_layers}): build the engine with engine_kwargs of this config"
        )
    logits = both[:, kept:] if config.logit_lens else both[:, :kept]
    out[[i for i, _, _, _ in jobs]] = finish_logits(logits[:, kept - window :], config)
    return out


async def rollout_features(
    llm,
    tokenizer,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    config: MedsConfig,
    num_layers: int,
) -> np.ndarray:
    """MEDS features of rollouts, computed by a patched `vllm.AsyncLLMEngine` (see
    `engine_kwargs`): float32 [rollouts, feature_width], NaN rows for rollouts without an
    answer, each per-layer logit at the precision of `config.feature_dtype`. Safe to await
    from many coroutines at once (each sees only its own requests).

    `response_ids_list[i]`: the generated token ids of rollout i; `num_layers`: the
    model's decoder layers (the engine must have been built with the same config).
    """
    from vllm.inputs import TokensPrompt

    jobs = _requests(tokenizer, prompt_ids_list, response_ids_list)

    async def prefill(ids, y_star, tag):
        async for _ in llm.generate(TokensPrompt(prompt_token_ids=ids), _sampling_params(y_star, tag), request_id=tag):
            pass

    await asyncio.gather(*(prefill(ids, y_star, tag) for _, ids, y_star, tag in jobs))
    tags = [tag for _, _, _, tag in jobs]
    rank_results = await llm.collective_rpc("meds_pop_features", args=(tags,)) if jobs else []
    return _assemble(len(response_ids_list), jobs, rank_results, config, num_layers)


def rollout_features_sync(
    llm,
    tokenizer,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    config: MedsConfig,
    num_layers: int,
) -> np.ndarray:
    """As `rollout_features`, for a patched offline `vllm.LLM`."""
    from vllm.inputs import TokensPrompt

    jobs = _requests(tokenizer, prompt_ids_list, response_ids_list)
    if jobs:
        llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for _, ids, _, _ in jobs],
            [_sampling_params(y_star, tag) for _, _, y_star, tag in jobs],
            use_tqdm=False,
        )
    tags = [tag for _, _, _, tag in jobs]
    rank_results = llm.collective_rpc("meds_pop_features", args=(tags,)) if jobs else []
    return _assemble(len(response_ids_list), jobs, rank_results, config, num_layers)
