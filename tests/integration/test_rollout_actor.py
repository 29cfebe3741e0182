"""The MEDS rollout engine's helpers and its contract with OpenRLHF's rollout internals
(the end-to-end run in tests/test_e2e.py exercises the engine itself)."""

import inspect

import pytest

from openrlhf_meds.cpu import patches

patches.install()  # CPU machine: flash-attn fallback for OpenRLHF's imports

from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator  # noqa: E402
from openrlhf.trainer.ray.vllm_engine import RolloutRayActor  # noqa: E402
from openrlhf.utils.agent import SingleTurnAgentExecutor  # noqa: E402

from openrlhf_meds.integration.rollout_actor import GROUP_ID, prompt_key, response_ids  # noqa: E402


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
    assert params == ["self", "prompt", "label", "sampling_params", "max_length", "hf_tokenizer", "num_samples", "images"]
    assert "self.llm = vllm.AsyncLLMEngine" in inspect.getsource(base.__init__)
    # A response dict carries the tokens, the action range, the verifier's score and extra_logs ...
    src = inspect.getsource(SingleTurnAgentExecutor.execute)
    for key in ('"observation_tokens"', '"action_ranges"', '"scores"', "extra_logs"):
        assert key in src, key
    # ... and extra_logs become per-sample Experience.info tensors (where the group id travels).
    src = inspect.getsource(SamplesGenerator._process_response_into_experience)
    assert 'extra_logs = response.get("extra_logs", {})' in src and "info[key] = torch.tensor([value])" in src
    assert GROUP_ID.startswith("meds_")
