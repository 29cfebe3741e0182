"""OpenRLHF's vLLM rollout actor, extended to feed the MEDS memory as groups finish.

`generate_responses` produces the n rollouts of one prompt. Right after, still inside the
engine actor and while other prompts keep generating, this subclass computes the rollouts'
MEDS features (`--meds.feature_source vllm`: a re-prefill on the same engine, see
`openrlhf_meds.engine`), submits the group with its raw verdicts (score >= 0.5) to the
MemoryActor, and tags every response with the group id so the trainer can fetch the
penalties. It runs only with `--meds.feature_source vllm`; with `actor` OpenRLHF's own engines
generate and the trainer submits the groups (`actor_features.py`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import ray
from openrlhf.trainer.ray.vllm_engine import RolloutRayActor

from ..meds.config import MedsConfig
from ..memory.client import MemoryClient

# Per-sample tags put in each response's extra_logs (OpenRLHF turns them into Experience.info).
GROUP_ID, ROLLOUT, HAS_FEATURE = "meds_group_id", "meds_rollout", "meds_has_feature"


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


@ray.remote
class MedsRolloutActor(RolloutRayActor.__ray_metadata__.modified_class):
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

    async def generate_responses(
        self, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=1, images=None
    ):
        responses = await super().generate_responses(
            prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=num_samples, images=images
        )
        gid, has_feature = -1, np.zeros(len(responses), bool)
        if self.meds_submit:
            if self.memory is None:
                raise RuntimeError("MEDS rollout engine used before meds_setup() gave it the memory")
            gid, has_feature = await self._submit(prompt, responses, hf_tokenizer)
        for i, r in enumerate(responses):
            logs = r.get("extra_logs") or {}
            logs.update({GROUP_ID: gid, ROLLOUT: i, HAS_FEATURE: int(has_feature[i])})
            r["extra_logs"] = logs
        return responses

    async def _submit(self, prompt, responses, tokenizer):
        from ..engine.client import rollout_features

        scores = [r.get("scores") for r in responses]
        if any(s is None for s in scores):
            raise RuntimeError("MEDS needs the verifier's score of every rollout (--reward.remote_url)")
        scores = np.asarray([float(s) for s in scores])
        ids = [response_ids(r) for r in responses]
        feats = await rollout_features(
            self.llm, tokenizer, [p for p, _ in ids], [g for _, g in ids], self.meds, self.meds_num_layers
        )
        has_feature = ~np.isnan(feats).all(axis=1)
        if self.filter_range is not None and not self.meds.filtered_into_memory:
            lo, hi = self.filter_range
            if not lo < scores.mean() < hi:
                return -1, has_feature  # OpenRLHF will drop this group: keep it out, as the reference
        gid, ack = self.memory.submit(prompt_key(prompt), self.meds_step, feats, scores >= 0.5)
        await ack
        return gid, has_feature


class MedsEngines:
    """Stands in for RolloutRayActor inside OpenRLHF's create_vllm_engines, which calls
    `RolloutRayActor.options(...).remote(**engine_args)`: starts MedsRolloutActors built
    with this MEDS config."""

    def __init__(self, config: MedsConfig, options: dict | None = None):
        self.config, self.opts = config, options or {}

    def options(self, **options) -> MedsEngines:
        return MedsEngines(self.config, options)

    def remote(self, *args, **kwargs):
        return MedsRolloutActor.options(**self.opts).remote(*args, meds=self.config.to_dict(), **kwargs)
