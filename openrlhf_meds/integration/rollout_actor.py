"""OpenRLHF's vLLM rollout actor, extended to feed the MEDS memory as groups finish.

`generate_responses` produces the n rollouts of one prompt. With `--meds.feature_source
vllm` each generation is tagged (`engine.client.capture`), so the engine captures its
feature while it generates; right after, still inside the engine actor and while other
prompts keep generating, this subclass collects the rollouts' MEDS features (a re-prefill
only for a rollout the engine did not capture, counted in `meds/feature_reprefills`; see
`openrlhf_meds.engine`; with `--meds.features semantic` the text embeddings of
`openrlhf_meds.meds.semantic`), submits the group with its raw verdicts (score >= 0.5) to the
MemoryActor, and tags every response with the group id so the trainer can fetch the
penalties. With `--meds.diversity` it also tags the responses with the group's diversity metrics
(`meds_div_*`, read by the trainer), MEDS on or off. It runs only with
`--meds.feature_source vllm`; with `actor` OpenRLHF's own engines generate and the trainer
submits the groups (`actor_features.py`).
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import ray
from openrlhf.trainer.ray.vllm_engine import RolloutRayActor

from ..meds.config import MedsConfig
from ..memory.client import MemoryClient
from .nodes import ensure_engine_nodes

# Per-sample tags put in each response's extra_logs (OpenRLHF turns them into Experience.info).
GROUP_ID, ROLLOUT, HAS_FEATURE = "meds_group_id", "meds_rollout", "meds_has_feature"
REPREFILLED = "meds_reprefilled"  # 1 where the feature took a re-prefill (not captured in-stream)
DIVERSITY = "meds_div_"  # + metric name: the group's value, on each of its samples


def final_answer(tokenizer, generated_ids) -> str | None:
    """The rollout's final answer: the contents of its last \\boxed{} (None without one)."""
    from ..verify import extract_boxed

    return extract_boxed(tokenizer.decode(generated_ids, skip_special_tokens=True))


def semantic_encoder(config: MedsConfig):
    """The `--meds.features semantic` encoder of this process (loaded on first use): on the
    process's GPU when Ray gave it one (a tensor-parallel-1 engine actor), else on the CPU."""
    import torch

    from ..meds.semantic import SemanticEncoder

    # Only inside Ray: outside it, get_gpu_ids() would start a local Ray instance.
    gpu = ray.is_initialized() and bool(ray.get_gpu_ids())
    return SemanticEncoder(config.embedding_model, device="cuda" if gpu and torch.cuda.is_available() else "cpu")


def diversity_tags(feats, answers, correct) -> dict[str, float]:
    """The group's diversity metrics (openrlhf_meds.meds.diversity) as per-sample tags."""
    from ..meds.diversity import group_diversity

    return {DIVERSITY + name: float(value) for name, value in group_diversity(feats, answers, correct).items()}


def capture_tags(captured, generated) -> list[str | None]:
    """The capture tag of each generated response, matched by its token ids (samples with
    equal tokens are interchangeable); None for a response no tagged generation produced."""
    free = {}
    for tag, ids in captured:
        free.setdefault(tuple(ids), []).append(tag)
    return [(free.get(tuple(g)) or [None]).pop() for g in generated]


def prompt_key(prompt: str) -> str:
    """The memory key of a prompt: a stable hash of its text (as sent to the engine)."""
    return hashlib.blake2b(prompt.encode(), digest_size=12).hexdigest()


def response_ids(response: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, generated ids) of a single-turn OpenRLHF response dict."""
    tokens = response["observation_tokens"]
    (start, end), *rest = response["action_ranges"]
    if rest:
        raise ValueError("MEDS supports single-turn rollouts (one action range per response)")
    return list(tokens[:start]), list(tokens[start:end])


class _FullBatchRolloutActor(RolloutRayActor.__ray_metadata__.modified_class):
    """OpenRLHF's rollout actor whose engine runs at full batch: `batch` = the
    `--vllm.max_num_seqs` / `--vllm.max_num_batched_tokens` given (None: what `vllm.LLM` gets
    on the engine's device, `engine.client.batch_limits`), resolved here, in the engine's
    process, where the device is known. Prints what the created engine's scheduler got."""

    async def __init__(self, *args, batch: dict, **kwargs):
        from ..engine.client import batch_limits

        kwargs.update(
            batch_limits(
                kwargs.get("tensor_parallel_size") or 1,
                batch.get("max_num_seqs"),
                batch.get("max_num_batched_tokens"),
                kwargs.get("max_model_len"),
                kwargs.get("enable_chunked_prefill"),
            )
        )
        await super().__init__(*args, **kwargs)
        scheduler = self.llm.vllm_config.scheduler_config
        print(
            f"rollout engine: max_num_seqs={scheduler.max_num_seqs}, "
            f"max_num_batched_tokens={scheduler.max_num_batched_tokens}",
            flush=True,
        )


RolloutActor = ray.remote(_FullBatchRolloutActor)


@ray.remote
class MedsRolloutActor(_FullBatchRolloutActor):
    """RolloutRayActor + MEDS: features and memory submission per finished prompt group."""

    async def __init__(self, *args, meds: dict, **kwargs):
        from transformers import AutoConfig

        self.meds = MedsConfig(**meds)
        self.memory, self.filter_range = None, None
        self.meds_step, self.meds_submit = 0, True
        model = kwargs["model"]
        hf_config = AutoConfig.from_pretrained(model, trust_remote_code=kwargs.get("trust_remote_code", False))
        self.meds_num_layers = hf_config.get_text_config().num_hidden_layers
        from ..engine.client import engine_kwargs

        # The engine must be built as the MEDS model subclass, with the feature drain in its
        # worker extension (a subclass of OpenRLHF's WorkerWrap: weight sync unchanged).
        kwargs.update(engine_kwargs(model, self.meds, kwargs.get("trust_remote_code", False)))
        await super().__init__(*args, **kwargs)  # OpenRLHF's __init__ is async (it awaits the engine)

    def meds_setup(self, memory: MemoryClient, filter_range=None):
        """Called by the MEDS trainer once the memory runs. `filter_range`: OpenRLHF's
        dynamic-filtering range when it is on (groups it will drop skip the memory)."""
        self.memory, self.filter_range = memory, filter_range

    def meds_set_step(self, step: int, submit: bool = True):
        """The training step of the next rollouts; submit=False for evaluation rollouts."""
        self.meds_step, self.meds_submit = int(step), bool(submit)

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        """OpenRLHF's one generation; inside a training group's generate_responses, tagged
        for in-stream feature capture."""
        from ..engine import client

        captured = client.GROUP_CAPTURES.get()
        if captured is None:
            return await super().generate(prompt_token_ids, sampling_params, multi_modal_data)
        params, tag = client.capture(sampling_params)
        output = await super().generate(prompt_token_ids, params, multi_modal_data)
        captured.append((tag, list(output.outputs[0].token_ids)))
        return output

    async def generate_responses(
        self, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=1, images=None
    ):
        from ..engine import client

        capturing = self.meds_submit and self.meds.features != "semantic"
        captured = []
        token = client.GROUP_CAPTURES.set(captured if capturing else None)
        try:
            responses = await super().generate_responses(
                prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=num_samples, images=images
            )
        finally:
            client.GROUP_CAPTURES.reset(token)
        tags = {GROUP_ID: -1, HAS_FEATURE: np.zeros(len(responses), int)}
        if self.meds_submit:  # a training group (evaluation rollouts get neither memory nor metrics)
            if self.meds.enable and self.memory is None:
                raise RuntimeError("MEDS rollout engine used before meds_setup() gave it the memory")
            tags = await self._features_and_memory(prompt, responses, hf_tokenizer, captured)
        for i, r in enumerate(responses):
            logs = r.get("extra_logs") or {}
            logs.update({key: value if np.isscalar(value) else value[i] for key, value in tags.items()})
            logs[ROLLOUT] = i
            r["extra_logs"] = logs
        return responses

    async def _features_and_memory(self, prompt, responses, tokenizer, captured=()) -> dict:
        """Features of the group; submitted to the memory with MEDS on; its diversity metrics
        with --meds.diversity. `captured`: (capture tag, generated ids) of the group's
        generations. Returns the per-sample tags {name: scalar or [n] values}."""
        from ..engine.client import rollout_features

        scores = [r.get("scores") for r in responses]
        if any(s is None for s in scores):
            raise RuntimeError("MEDS needs the verifier's score of every rollout (--reward.remote_url)")
        scores = np.asarray([float(s) for s in scores])
        ids = [response_ids(r) for r in responses]
        if self.meds.features == "semantic":
            if getattr(self, "meds_encoder", None) is None:  # one encoder per engine actor
                self.meds_encoder = semantic_encoder(self.meds)
            # In a thread: the encoder's forward must not block the actor's event loop, which
            # keeps streaming the other prompts' generations.
            feats = await asyncio.to_thread(self.meds_encoder.rollout_features, tokenizer, [g for _, g in ids])
            reprefilled = np.zeros(len(ids), int)
        else:
            feats, reprefilled = await rollout_features(
                self.llm,
                tokenizer,
                [p for p, _ in ids],
                [g for _, g in ids],
                self.meds,
                self.meds_num_layers,
                tags=capture_tags(captured, [g for _, g in ids]),
            )
        answers = [final_answer(tokenizer, g) for _, g in ids]
        tags = {
            GROUP_ID: -1,
            HAS_FEATURE: (~np.isnan(feats).all(axis=1)).astype(int),
            REPREFILLED: np.asarray(reprefilled, int),
        }
        if self.meds.diversity:
            tags.update(diversity_tags(feats, answers, scores >= 0.5))
        if not self.meds.enable:
            return tags
        if self.filter_range is not None and not self.meds.filtered_into_memory:
            lo, hi = self.filter_range
            if not lo < scores.mean() < hi:
                return tags  # OpenRLHF will drop this group: keep it out, as the reference
        gid, ack = self.memory.submit(prompt_key(prompt), self.meds_step, feats, scores >= 0.5, answers=answers)
        await ack
        tags[GROUP_ID] = gid
        return tags


class RolloutEngines:
    """Stands in for RolloutRayActor inside OpenRLHF's create_vllm_engines, which calls
    `RolloutRayActor.options(...).remote(**engine_args)`: starts rollout actors at full batch
    (`batch`: {"max_num_seqs", "max_num_batched_tokens"}, None values for vLLM's device
    defaults), MedsRolloutActors when a MEDS config is given (MEDS or --meds.diversity on
    with the vllm feature source), OpenRLHF's own actor otherwise."""

    def __init__(self, batch: dict, config: MedsConfig | None = None, options: dict | None = None):
        self.batch, self.config, self.opts = dict(batch), config, options or {}

    def options(self, **options) -> RolloutEngines:
        return RolloutEngines(self.batch, self.config, options)

    def remote(self, *args, **kwargs):
        if self.config is None:
            return RolloutActor.options(**self.opts).remote(*args, batch=self.batch, **kwargs)
        # Before the engine: a node without the MEDS vLLM plugin is an error naming it here, not an
        # unsupported-architecture error deep inside the engine.
        ensure_engine_nodes(self.opts.get("scheduling_strategy"))
        return MedsRolloutActor.options(**self.opts).remote(
            *args, batch=self.batch, meds=self.config.to_dict(), **kwargs
        )
