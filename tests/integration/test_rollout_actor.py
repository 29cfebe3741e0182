"""The MEDS rollout engine (`--meds.feature_source vllm`): its tags travel through OpenRLHF's
response dicts into the trainer's experiences; its helpers; its contract with OpenRLHF's
rollout internals (the end-to-end run in tests/test_e2e.py exercises it with vLLM)."""

import asyncio
import inspect
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.trainer.ray.vllm_engine import RolloutRayActor
from openrlhf.utils.agent import SingleTurnAgentExecutor
from vllm import SamplingParams

from openrlhf_meds.demo.task import EOS, REWARD_FILE, format_prompt
from openrlhf_meds.engine.client import EngineFeatures
from openrlhf_meds.engine.vllm_features import CAPTURE_ARG
from openrlhf_meds.integration.rollout_actor import (
    DIVERSITY,
    GROUP_ID,
    HAS_FEATURE,
    REPREFILLED,
    ROLLOUT,
    MedsRolloutActor,
    prompt_key,
    response_ids,
)
from openrlhf_meds.integration.trainer import MedsExperienceMaker, diversity_metrics, reprefill_metrics
from openrlhf_meds.meds import MedsConfig

PAD = 151643


class ScriptedLLM:
    """Stands in for vLLM's AsyncLLMEngine in generation: each prompt's next scripted text."""

    def __init__(self, tokenizer, script: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.script = {tuple(tokenizer.encode(p)): list(texts) for p, texts in script.items()}
        self.capture_tags = []  # each generation's in-stream capture tag (None: untagged)

    async def generate(self, prompt, sampling_params, request_id):
        self.capture_tags.append((sampling_params.extra_args or {}).get(CAPTURE_ARG))
        text = self.script[tuple(prompt["prompt_token_ids"])].pop(0)
        out = SimpleNamespace(token_ids=self.tokenizer.encode(text), text=text, finish_reason="stop", logprobs=None)
        yield SimpleNamespace(outputs=[out])


class RecordingMemory:
    """Stands in for MemoryClient: records submissions; each group's penalty for rollout i is
    (group number + 1) / 10 + i / 100, so a penalty names the group and rollout it was meant for."""

    def __init__(self):
        self.groups = []

    def submit(self, key, step, features, correct, answers=None):
        self.groups.append(SimpleNamespace(key=key, step=step, features=features, correct=correct, answers=answers))

        async def ack():
            return None

        return 1000 + len(self.groups) - 1, ack()

    def fetch(self, group_ids):
        return [(np.ones(len(self.groups[g - 1000].correct)), self.penalties(g - 1000)) for g in group_ids]

    def penalties(self, g):
        return (g + 1) / 10 + np.arange(len(self.groups[g].correct)) / 100


def fake_rollout_features(calls):
    """Stands in for the vLLM engine's features: [answer digit, response length], NaN without
    a \\boxed{} answer, "re-prefilled" where no capture tag came; records what it was asked."""

    async def rollout_features(llm, tokenizer, prompt_ids, response_ids, config, num_layers, tags=None):
        calls.append((prompt_ids, response_ids, tags))
        feats = np.full((len(response_ids), 2), np.nan, np.float32)
        for i, ids in enumerate(response_ids):
            text = tokenizer.decode(ids)
            if "\\boxed{" in text:
                feats[i] = [float(text.split("\\boxed{")[1][0]), len(ids)]
        return EngineFeatures(feats, np.array([t is None for t in tags]))

    return rollout_features


def scripted_engine(tok, config: MedsConfig, script: dict[str, list[str]], memory, filter_range=None):
    """A MedsRolloutActor without its vLLM engine: what MedsRolloutActor.__init__ and
    RolloutRayActor.__init__ set, generation scripted, the demo's reward file."""
    engine = object.__new__(MedsRolloutActor.__ray_metadata__.modified_class)
    engine.meds, engine.meds_num_layers, engine.meds_step, engine.meds_submit = config, 16, 0, True
    engine.executor = SingleTurnAgentExecutor(REWARD_FILE)
    engine._mm_pad_token_ids = None
    engine.llm = ScriptedLLM(tok, script)
    engine.meds_setup(memory, filter_range=filter_range)
    return engine


def generate(engine, tok, prompt, label, n):
    params = SamplingParams(max_tokens=16, temperature=1.0)
    return asyncio.run(engine.generate_responses(prompt, label, params, 256, tok, num_samples=n))


def test_engine_tags_reach_the_trainer_through_openrlhf_responses(qwen_tokenizer, monkeypatch):
    """MedsRolloutActor.generate_responses over OpenRLHF's own generate_responses,
    SingleTurnAgentExecutor and the demo's reward file (vLLM's generation scripted): a training
    group is submitted and its rollouts tagged; OpenRLHF turns the tags into Experience.info;
    the MEDS experience maker gives each rollout its own penalty after the rollouts were
    shuffled into micro-batches. A group dynamic filtering will drop and an evaluation group
    are tagged but not submitted."""
    tok = qwen_tokenizer
    boxed = lambda a: f"So \\boxed{{{a}}}.{EOS}"
    prompts = {  # prompt -> (label, scripted responses)
        "train": (format_prompt("What is 2 + 3?"), "5", [boxed(5), boxed(6), "No idea." + EOS, boxed(5)]),
        "filtered": (format_prompt("What is 4 + 4?"), "8", [boxed(8)] * 4),  # all right: mean score 1
        "eval": (format_prompt("What is 1 + 1?"), "2", [boxed(3), boxed(2), boxed(2), boxed(2)]),
    }
    calls, memory = [], RecordingMemory()
    monkeypatch.setattr("openrlhf_meds.engine.client.rollout_features", fake_rollout_features(calls))
    script = {p: texts for p, _, texts in prompts.values()}
    # filter_range: --algo.dynamic_filtering_enable, its default range
    engine = scripted_engine(tok, MedsConfig(), script, memory, filter_range=[0.0, 1.0])
    engine.meds_set_step(3)
    responses = {name: generate(engine, tok, *prompts[name][:2], 4) for name in ("train", "filtered")}
    engine.meds_set_step(3, submit=False)  # MedsPPOTrainer.evaluate
    responses["eval"] = generate(engine, tok, *prompts["eval"][:2], 4)

    # Only the training group reached the memory, with its verdicts, rows in rollout order,
    # and (prompt ids, generated ids) split as the executor built them.
    (group,) = memory.groups
    assert group.key == prompt_key(prompts["train"][0]) and group.step == 3
    np.testing.assert_array_equal(group.correct, [True, False, False, True])
    np.testing.assert_array_equal(group.features[:, 0], [5, 6, np.nan, 5])
    assert group.answers == ["5", "6", None, "5"]  # each rollout's final answer, stored with its vector
    assert [tok.decode(g) for g in calls[0][1]] == prompts["train"][2]
    assert all(tok.decode(p) == prompts["train"][0] for p in calls[0][0])
    assert len(calls) == 2  # the filtered group's features were computed (no eval features)
    # Every training generation was tagged for in-stream capture, and its response came to
    # rollout_features with its own tag; evaluation generations were not tagged.
    seen = engine.llm.capture_tags
    assert len(seen) == 12 and None not in seen[:8] and seen[8:] == [None] * 4 and len(set(seen[:8])) == 8
    # Matched by tokens: the distinct responses 1 and 2 to their own generations; the equal
    # responses (0 and 3 of train, all of filtered) are interchangeable.
    assert calls[0][2][1:3] == seen[1:3] and sorted(calls[0][2]) == sorted(seen[:4])
    assert sorted(calls[1][2]) == sorted(seen[4:8])

    # OpenRLHF's response -> Experience: the tags are per-sample info tensors, next to the
    # reward file's own extra_logs ("boxed").
    samples = {
        name: [SamplesGenerator._process_response_into_experience(None, r, max_len=256) for r in rs]
        for name, rs in responses.items()
    }
    expected = {"train": (1000, [1, 1, 0, 1]), "filtered": (-1, [1, 1, 1, 1]), "eval": (-1, [0, 0, 0, 0])}
    for name, (gid, has_feature) in expected.items():
        for i, s in enumerate(samples[name]):
            tags = (s.info[GROUP_ID].item(), s.info[ROLLOUT].item(), s.info[HAS_FEATURE].item())
            assert tags == (gid, i, has_feature[i]), (name, i)
            assert "boxed" in s.info
            assert (DIVERSITY + "distinct_answers" in s.info) == (name != "eval")  # training groups only

    # Shuffled into two micro-batches (as dynamic batching does), then shaped: each rollout
    # gets its own penalty from the fetched group; untracked groups get none.
    order = [(n, i) for n in ("train", "filtered") for i in range(4)]
    random.Random(0).shuffle(order)
    batches = [Experience.concat_experiences([samples[n][i] for n, i in order[k : k + 4]], PAD) for k in (0, 4)]
    strategy = SimpleNamespace(
        args=SimpleNamespace(algo=SimpleNamespace(advantage=SimpleNamespace(estimator="group_norm")))
    )
    kl = FixedKLController(0.0)
    maker = MedsExperienceMaker(None, None, None, None, kl, strategy, None, meds=MedsConfig(), memory=memory)
    # The diversity tags of the two training groups, averaged over groups: train has answers
    # 5, 6, none, 5 (right, wrong, wrong, right), filtered 8 x 4 (all right).
    div = diversity_metrics(batches)
    assert div["div/distinct_answers"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert div["div/repeated_error_rate"] == pytest.approx(1 / 2)  # train only: "6" once of 2 wrong
    assert div["div/pass@1"] == pytest.approx((1 / 2 + 1) / 2)
    assert div["div/pass@4"] == pytest.approx(1.0)
    assert not [tag for b in batches for tag in b.info if tag.startswith(DIVERSITY)]  # popped
    assert reprefill_metrics(batches) == {"meds/feature_reprefills": 0.0}
    assert not [b for b in batches if REPREFILLED in b.info]  # popped
    metrics = maker.shape_rewards(batches)
    got = dict(zip(order, torch.cat([b.info["meds_penalty"] for b in batches]).tolist()))
    want = dict(zip(order, [0.0] * 8))
    want.update({("train", i): p for i, p in enumerate(memory.penalties(0))})
    assert got == pytest.approx(want)
    assert metrics["meds/no_feature_frac"] == pytest.approx(1 / 8)


def test_semantic_features_come_from_the_encoder_without_a_re_prefill(qwen_tokenizer, tiny_encoder, monkeypatch):
    from openrlhf_meds.meds.semantic import SemanticEncoder

    tok = qwen_tokenizer
    prompt = format_prompt("What is 2 + 3?")
    texts = [f"So \\boxed{{5}}.{EOS}", "No idea." + EOS, f"It is \\boxed{{7}}.{EOS}"]
    calls, memory = [], RecordingMemory()
    monkeypatch.setattr("openrlhf_meds.engine.client.rollout_features", fake_rollout_features(calls))
    config = MedsConfig(features="semantic", embedding_model=tiny_encoder)
    engine = scripted_engine(tok, config, {prompt: list(texts)}, memory)
    responses = generate(engine, tok, prompt, "5", 3)
    (group,) = memory.groups
    assert calls == []  # the engine was not asked for logit features
    want = SemanticEncoder(tiny_encoder).rollout_features(tok, [tok.encode(t) for t in texts])
    assert group.features.shape == (3, 32) and np.isnan(group.features[1]).all()
    np.testing.assert_allclose(group.features, want, atol=1e-6)
    assert group.answers == ["5", None, "7"]
    assert [r["extra_logs"][HAS_FEATURE] for r in responses] == [1, 0, 1]


def test_prompt_key_is_a_stable_hash_of_the_text():
    assert prompt_key("What is 2 + 2?") == prompt_key("What is 2 + 2?")
    assert prompt_key("What is 2 + 2?") != prompt_key("What is 2 + 3?")
    assert len(prompt_key("x")) == 24 and int(prompt_key("x"), 16) >= 0


def test_response_ids_split_prompt_and_generation():
    r = {"observation_tokens": [1, 2, 3, 4, 5], "action_ranges": [(2, 5)]}
    assert response_ids(r) == ([1, 2], [3, 4, 5])
    with pytest.raises(ValueError, match="single-turn"):
        response_ids({"observation_tokens": [1, 2, 3], "action_ranges": [(0, 1), (2, 3)]})


def test_openrlhf_rollout_internals_the_engine_relies_on():
    """Contract with openrlhf 0.11.2 (patches/README.md)."""
    base = RolloutRayActor.__ray_metadata__.modified_class
    params = [p for p in inspect.signature(base.generate_responses).parameters if not p.startswith("_ray")]
    want = ["self", "prompt", "label", "sampling_params", "max_length", "hf_tokenizer", "num_samples", "images"]
    assert params == want
    assert "self.llm = vllm.AsyncLLMEngine" in inspect.getsource(base.__init__)
    # A response dict carries the tokens, the action range, the verifier's score and extra_logs ...
    src = inspect.getsource(SingleTurnAgentExecutor.execute)
    for key in ('"observation_tokens"', '"action_ranges"', '"scores"', "extra_logs"):
        assert key in src, key
    # ... and extra_logs become per-sample Experience.info tensors (where the group id travels).
    src = inspect.getsource(SamplesGenerator._process_response_into_experience)
    assert 'extra_logs = response.get("extra_logs", {})' in src and "info[key] = torch.tensor([value])" in src
