"""--meds.filter_metric shaped on OpenRLHF's real SamplesGenerator: an all-wrong group whose
rollouts MEDS penalizes differently (real ErrorMemory penalties) is kept and trained on, while
OpenRLHF's raw-score filter drops it; plus the contract with the internals the filter wraps."""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from openrlhf.trainer import ppo_trainer
from openrlhf.trainer.ppo_utils import samples_generator as openrlhf_generator
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

from openrlhf_meds.integration import shaped_filter
from openrlhf_meds.integration.rollout_actor import GROUP_ID, HAS_FEATURE, ROLLOUT
from openrlhf_meds.integration.trainer import MedsExperienceMaker
from openrlhf_meds.meds import ErrorMemory, MedsConfig, shape_rewards

N = 4  # rollouts per prompt
RNG = np.random.default_rng(0)
MODE_A, MODE_B = RNG.normal(size=8), RNG.normal(size=8)  # two past errors of the same prompt

# prompt -> (verdicts, error mode of each wrong rollout), in the order the dataloader yields them
SCRIPT = {
    "mixed": ([1, 0, 0, 0], "AAAA"),
    "told_apart": ([0, 0, 0, 0], "AAAB"),  # all wrong; its errors recur 4 and 2 times in the memory
    "first_visit": ([0, 0, 0, 0], "AAAA"),  # all wrong, nothing stored yet: every penalty 0
    "all_right": ([1, 1, 1, 1], "AAAA"),
    "mixed2": ([1, 1, 0, 0], "AAAA"),
    "all_right2": ([1, 1, 1, 1], "AAAA"),
    "mixed3": ([0, 1, 0, 0], "AAAA"),
    "mixed4": ([0, 0, 1, 0], "AAAA"),
}


class LocalMemory:
    """MemoryClient's submit / fetch over a real ErrorMemory in this process (a group's
    penalties are handed out once, as the MemoryActor does)."""

    def __init__(self):
        self.memory, self.results, self.fetched = ErrorMemory(MedsConfig(alpha=0.1)), {}, []

    def submit(self, key, feats, correct):
        gid = 1000 + len(self.results) + len(self.fetched) * 100
        self.results[gid] = self.memory.step([key] * len(feats), feats, np.asarray(correct, bool))
        return gid

    def fetch(self, gids):
        self.fetched.extend(gids)
        return [self.results.pop(g) for g in gids]


def features(modes: str):
    vectors = np.vstack([MODE_A if m == "A" else MODE_B for m in modes])
    return vectors + RNG.normal(scale=0.01, size=vectors.shape)


def engine(memory):
    """A MEDS engine stand-in: submits every group (as with the shaped filter) and returns
    OpenRLHF response dicts tagged with the group id."""

    def generate(prompt):
        verdicts, modes = SCRIPT[prompt]
        gid = memory.submit(prompt, features(modes), np.array(verdicts) >= 0.5)
        return [
            {
                "prompt": prompt,
                "label": "",
                "observation_tokens": [1, 2, 3, 4 + i],
                "action_ranges": [(3, 4)],
                "reward": float(v),
                "scores": float(v),
                "rollout_log_probs": None,
                "extra_logs": {GROUP_ID: gid, ROLLOUT: i, HAS_FEATURE: 1},
            }
            for i, v in enumerate(verdicts)
        ]

    return generate


def generator(monkeypatch, memory) -> SamplesGenerator:
    """OpenRLHF's SamplesGenerator with dynamic filtering on (range 0 1), engines replaced by
    `engine` (a ray "ref" is the list of a prompt's responses)."""
    monkeypatch.setattr(
        openrlhf_generator,
        "ray",
        SimpleNamespace(wait=lambda refs, num_returns, timeout: (refs[:1], refs[1:]), get=lambda ref: ref),
    )
    gen = object.__new__(SamplesGenerator)
    gen.args = SimpleNamespace(
        rollout=SimpleNamespace(batch_size=4, n_samples_per_prompt=N, vllm_generate_batch_size=None),
        algo=SimpleNamespace(dynamic_filtering_enable=True, dynamic_filtering_range=(0.0, 1.0)),
        vllm=SimpleNamespace(enable_sleep=False),
    )
    gen.prompts_dataloader = [(None, [p], [""], [None]) for p in SCRIPT]
    make = engine(memory)
    gen._dispatch_prompts_to_vllm = lambda prompts, labels, images=None, **kw: [make(p) for p in prompts]
    return gen


def prefill(memory):
    """The told-apart prompt's past: 4 rollouts of error A and 2 of error B (two clusters)."""
    memory.memory.step(["told_apart"] * 6, features("AAAABB"), np.zeros(6, bool))


def test_shaped_filter_keeps_an_all_wrong_group_meds_tells_apart_and_raw_drops_it(monkeypatch):
    # OpenRLHF's own filter on raw scores: the all-wrong told-apart group is dropped.
    memory = LocalMemory()
    prefill(memory)
    samples, _, consumed, _ = generator(monkeypatch, memory).generate_samples()
    assert [s.prompts[0] for s in samples[::N]] == ["mixed", "mixed2", "mixed3", "mixed4"]
    assert consumed == 8

    # The shaped filter: kept, with one round of refills per dropped group.
    memory = LocalMemory()
    prefill(memory)
    gen = generator(monkeypatch, memory)
    shaped_filter.install(gen, memory, [0.0, 1.0])
    samples, _, consumed, _ = gen.generate_samples()
    assert [s.prompts[0] for s in samples[::N]] == ["mixed", "told_apart", "mixed2", "mixed3"]
    assert consumed == 7  # 4, then 2 for first_visit and all_right, then 1 for all_right2
    told_apart = samples[N : 2 * N]
    pens = np.array([float(e.info[shaped_filter.PENALTY][0]) for e in told_apart])
    np.testing.assert_allclose(pens, 0.1 * np.log([5, 5, 5, 3]))  # |C| = 4 (error A), 2 (error B)
    assert [int(e.info[shaped_filter.RESCUED][0]) for e in samples[::N]] == [0, 1, 0, 0]

    # The trainer shapes with the penalties the filter fetched (no second fetch), and the
    # told-apart group gets non-zero advantages.
    fetched = list(memory.fetched)
    batch = Experience.concat_experiences(samples, 0)
    maker = object.__new__(MedsExperienceMaker)
    maker.memory = memory
    metrics = maker.shape_rewards([batch])
    assert memory.fetched == fetched
    verdicts = np.concatenate([SCRIPT[p][0] for p in ("mixed", "told_apart", "mixed2", "mixed3")])
    want = shape_rewards(verdicts.astype(float), verdicts >= 0.5, batch.info["meds_penalty"].double().numpy())
    np.testing.assert_allclose(batch.rewards.numpy(), want, rtol=1e-6)
    assert np.ptp(batch.rewards.numpy()[N : 2 * N]) > 0
    assert metrics["meds/filter_rescued_frac"] == pytest.approx(1 / 4)
    assert metrics["meds/lost_groups"] == 0.0
    assert not any(k.startswith("meds_filter_") or k == GROUP_ID for k in batch.info)


def test_evaluation_is_not_filtered(monkeypatch):
    memory = LocalMemory()
    gen = generator(monkeypatch, memory)
    shaped_filter.install(gen, memory, [0.0, 1.0])
    out, consumed, _ = gen._generate_vllm(iter(gen.prompts_dataloader), 3, dynamic_filtering=False)
    assert [e.prompts[0] for e in out[::N]] == ["mixed", "told_apart", "first_visit"] and consumed == 3
    assert memory.fetched == [] and shaped_filter.PENALTY not in out[0].info


def test_openrlhf_internals_the_shaped_filter_relies_on():
    """Contract with openrlhf 0.11.2 (patches/README.md)."""
    params = list(inspect.signature(SamplesGenerator._generate_vllm).parameters)
    assert params[:4] == ["self", "dataloader_iter", "num_prompts", "dynamic_filtering"]
    # Training batches ask _generate_vllm through self (an instance attribute replaces it) with
    # the filter flag; evaluation asks with the filter off.
    assert "self._generate_vllm(" in inspect.getsource(SamplesGenerator.generate_samples)
    assert "dynamic_filtering=self.args.algo.dynamic_filtering_enable" in inspect.getsource(
        SamplesGenerator.generate_samples
    )
    assert "dynamic_filtering=False" in inspect.getsource(SamplesGenerator.generate_eval_samples)
    src = inspect.getsource(SamplesGenerator._generate_vllm)
    # A prompt's samples are appended together; the raw rule is filter_keeps(..., "raw").
    assert "accepted_experiences.extend(experiences)" in src
    assert "avg_reward = sum(scores) / len(scores)" in src and "if not (min_r < avg_reward < max_r):" in src
    assert "return accepted_experiences, prompts_consumed, exhausted" in src
    # The sync trainer holds the generator as self.samples_generator (async: tests/integration/
    # test_async_trainer.py); extra_logs become per-sample info tensors.
    assert "self.samples_generator = SamplesGenerator(" in inspect.getsource(
        ppo_trainer.PPOTrainer.__ray_metadata__.modified_class.__init__
    )
    assert "info[key] = torch.tensor([value])" in inspect.getsource(SamplesGenerator._process_response_into_experience)
    merged = Experience._merge_item([{"t": torch.tensor([1.0])}, {"t": torch.tensor([2.0])}])
    assert merged["t"].tolist() == [1.0, 2.0]
