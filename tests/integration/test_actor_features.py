"""`--meds.feature_source actor`: features read inside OpenRLHF's policy log-prob forward equal
the Hugging Face hook reference (`response_features`) on the same weights.

The batches are built by OpenRLHF's own code (`SamplesGenerator._process_response_into_experience`
and `Experience.concat_experiences`), so the layout (right padding, action_mask shifted by one)
is the one the trainer sees. The ZeRO-3 test runs DeepSpeed on one gloo rank in a child process
(this file, run as a script), so torch.distributed never starts in the pytest process.
"""

import inspect
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from openrlhf.models import Actor
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

from openrlhf_meds.cpu.launch import free_port
from openrlhf_meds.integration import actor_features as af
from openrlhf_meds.meds.config import MedsConfig
from openrlhf_meds.meds.features import response_features

PAD = 151643
TEXTS = [  # (prompt, response); the third has no answer, the fourth's brace is far from the end
    ("What is 2 + 2?", " 2 + 2 = 4, so \\boxed{4}. Done.<|endoftext|>"),
    ("Compute 1/2 + 0.", "It is $\\boxed{\\frac{1}{2}}$<|endoftext|>"),
    ("Say hi.", "hi<|endoftext|>"),
    (
        "A longer question, with more words in its prompt: what is 3 * 3?",
        "\\boxed{9} because 3 * 3 = 9 and that is all.<|endoftext|>",
    ),
    ("Q?", "First \\boxed{1}, no wait: \\boxed{2}<|endoftext|>"),
]
CONFIGS = [MedsConfig(layers=14), MedsConfig(layers=6, layer_diff=True, logit_lens=True)]


def rollouts(tokenizer, texts=TEXTS):
    return [(tokenizer.encode(p), tokenizer.encode(r)) for p, r in texts]


def openrlhf_batch(pairs) -> Experience:
    """One micro-batch exactly as OpenRLHF 0.11.2 builds it from vLLM responses."""
    experiences = []
    for prompt, response in pairs:
        tokens = prompt + response
        reply = dict(
            observation_tokens=tokens,
            action_ranges=[(len(prompt), len(tokens))],
            reward=0.0,
            scores=0.0,
            rollout_log_probs=None,
            prompt="p",
            label="l",
        )
        # The method does not use `self` (checked by the contract test below).
        experiences.append(SamplesGenerator._process_response_into_experience(None, reply, max_len=4096))
    return Experience.concat_experiences(experiences, PAD)


def left_padded_batch(pairs):
    """Prompts left padded, responses right padded (the layout of older OpenRLHF versions)."""
    longest_prompt = max(len(p) for p, _ in pairs)
    longest_response = max(len(r) for _, r in pairs)
    width = longest_prompt + longest_response
    sequences = torch.full((len(pairs), width), PAD)
    attention_mask = torch.zeros_like(sequences)
    action_mask = torch.zeros(len(pairs), longest_response, dtype=torch.bool)
    for i, (prompt, response) in enumerate(pairs):
        start = longest_prompt - len(prompt)
        sequences[i, start : start + len(prompt) + len(response)] = torch.tensor(prompt + response)
        attention_mask[i, start : start + len(prompt) + len(response)] = 1
        action_mask[i, : len(response)] = True
    return sequences, action_mask, attention_mask


@pytest.fixture(scope="module")
def actor(tiny_qwen2):
    """OpenRLHF's Actor loading the tiny model's files (bf16, as OpenRLHF loads it), then
    float32 so the comparison with the reference is tight."""
    actor = Actor(tiny_qwen2.name_or_path, attn_implementation="eager", param_dtype="bf16")
    actor.model.float().eval()
    return actor


@pytest.fixture(scope="module")
def bf16_actor(tiny_qwen2):
    """The Actor as OpenRLHF loads it: bf16 weights and activations."""
    return Actor(tiny_qwen2.name_or_path, attn_implementation="eager", param_dtype="bf16").eval()


def run(actor, tokenizer, config, sequences, action_mask, attention_mask):
    with (
        torch.no_grad(),
        af.feature_capture(actor, tokenizer, config, sequences, action_mask, attention_mask) as finish,
    ):
        log_probs = actor(sequences, action_mask, attention_mask)
        features = finish()
    return log_probs, features


@pytest.mark.parametrize("config", CONFIGS, ids=["layers14", "diff_lens6"])
def test_features_in_the_actor_forward_equal_the_reference(actor, qwen_tokenizer, config):
    pairs = rollouts(qwen_tokenizer)
    batch = openrlhf_batch(pairs)
    assert batch.sequences.shape[1] == batch.action_mask.shape[1] + 1  # OpenRLHF's layout
    log_probs, got = run(actor, qwen_tokenizer, config, batch.sequences, batch.action_mask, batch.attention_mask)
    want = response_features(actor.model, qwen_tokenizer, *zip(*pairs), config)
    assert got.dtype == np.float32 and got.shape == want.shape == (5, config.layers)
    assert np.isnan(got[2]).all() and not np.isnan(got[[0, 1, 3, 4]]).any()
    # float32 both sides; only the batch shapes differ (observed < 1e-6).
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The hooks leave the forward's own output unchanged.
    with torch.no_grad():
        plain = actor(batch.sequences, batch.action_mask, batch.attention_mask)
    torch.testing.assert_close(log_probs, plain, rtol=0, atol=0)


def test_left_padding(actor, qwen_tokenizer):
    pairs = rollouts(qwen_tokenizer)
    sequences, action_mask, attention_mask = left_padded_batch(pairs)
    _, got = run(actor, qwen_tokenizer, CONFIGS[0], sequences, action_mask, attention_mask)
    want = response_features(actor.model, qwen_tokenizer, *zip(*pairs), CONFIGS[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.isnan(got[2]).all()


def test_packed_samples(actor, qwen_tokenizer):
    """--ds.packing_samples: the Actor removes the padding and runs one [1, tokens] row."""
    pairs = rollouts(qwen_tokenizer)
    batch = openrlhf_batch(pairs)
    actor.packing_samples = True
    try:
        _, got = run(actor, qwen_tokenizer, CONFIGS[0], batch.sequences, batch.action_mask, batch.attention_mask)
    finally:
        actor.packing_samples = False
    want = response_features(actor.model, qwen_tokenizer, *zip(*pairs), CONFIGS[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_lora_actor(tiny_qwen2, actor, qwen_tokenizer):
    """--ds.lora.rank: Actor.model is a PeftModel; the LoRA layers sit inside the decoder."""
    lora = Actor(
        tiny_qwen2.name_or_path,
        attn_implementation="eager",
        param_dtype="bf16",
        lora_rank=4,
        target_modules=["q_proj", "v_proj"],
    )
    lora.model.float().eval()
    with torch.no_grad():
        for name, param in lora.model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: make the adapters change the forward
                param.normal_(std=0.5)
    pairs = rollouts(qwen_tokenizer)
    batch = openrlhf_batch(pairs)
    _, got = run(lora, qwen_tokenizer, CONFIGS[0], batch.sequences, batch.action_mask, batch.attention_mask)
    want = response_features(af.hf_model(lora), qwen_tokenizer, *zip(*pairs), CONFIGS[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    _, without = run(actor, qwen_tokenizer, CONFIGS[0], batch.sequences, batch.action_mask, batch.attention_mask)
    assert np.nanmax(np.abs(got - without)) > 1e-2


def test_batch_without_answers_and_hooks_removed(actor, qwen_tokenizer):
    hooks = lambda: [len(m._forward_hooks) for m in actor.model.model.layers]  # noqa: E731
    before = hooks()
    batch = openrlhf_batch(rollouts(qwen_tokenizer, [TEXTS[2], ("Hello", "no answer here<|endoftext|>")]))
    _, got = run(actor, qwen_tokenizer, CONFIGS[0], batch.sequences, batch.action_mask, batch.attention_mask)
    assert got.shape == (2, 14) and np.isnan(got).all()
    assert hooks() == before
    with pytest.raises(RuntimeError, match="did not run"):
        with af.feature_capture(
            actor, qwen_tokenizer, CONFIGS[0], batch.sequences, batch.action_mask, batch.attention_mask
        ) as finish:
            finish()
    assert hooks() == before


def test_multi_turn_action_mask_is_refused(qwen_tokenizer):
    batch = openrlhf_batch(rollouts(qwen_tokenizer)[:1])
    action_mask = batch.action_mask.clone()
    action_mask[0, torch.nonzero(action_mask[0])[3]] = False  # an observation inside the response
    with pytest.raises(ValueError, match="single-turn.*row 0"):
        af.answer_positions(qwen_tokenizer, batch.sequences, action_mask, batch.attention_mask, packed=False)


def policy_actor(actor, tokenizer, ring=1, tp=1):
    """A MedsPolicyModelActor without Ray and DeepSpeed: the attributes its forward reads,
    as `init_model_from_pretrained` sets them (`strategy` stands in for DeepspeedStrategy)."""
    cls = af.MedsPolicyModelActor.__ray_metadata__.modified_class
    policy = object.__new__(cls)
    policy.actor, policy.tokenizer = actor, tokenizer
    ds = SimpleNamespace(ring_attn_size=ring, tensor_parallel_size=tp)
    policy.strategy = SimpleNamespace(args=SimpleNamespace(ds=ds), ring_attn_group=None)
    return policy


def test_policy_actor_stashes_features_in_call_order(bf16_actor, qwen_tokenizer):
    actor = bf16_actor
    policy = policy_actor(actor, qwen_tokenizer)
    pairs = rollouts(qwen_tokenizer)
    batches = [openrlhf_batch(pairs[:2]), openrlhf_batch(pairs[2:3]), openrlhf_batch(pairs[3:])]
    with pytest.raises(RuntimeError, match="before meds_setup"):
        policy.forward(batches[0].sequences, batches[0].action_mask, batches[0].attention_mask)
    policy.meds_setup(CONFIGS[0].to_dict())
    for b in batches:
        log_probs = policy.forward(b.sequences, b.action_mask, b.attention_mask)
        assert log_probs.shape == b.action_mask.shape
    got = policy.meds_pop_features()
    assert [len(f) for f in got] == [2, 1, 2]
    want = response_features(actor.model, qwen_tokenizer, *zip(*pairs), CONFIGS[0])
    # bf16 activations, float32 dot products on both sides; only the batch shapes differ, so
    # the activations match bit for bit here (observed difference 0.0). 1e-3 would still
    # reject an off-by-one position (~0.1) or a bf16 dot product (~2e-3).
    np.testing.assert_allclose(np.concatenate(got), want, rtol=0, atol=1e-3)
    assert policy.meds_pop_features() == []


@pytest.mark.parametrize("ring,tp,flag", [(2, 1, "--ds.ring_attn_size 2"), (1, 2, "--ds.tensor_parallel_size 2")])
def test_sequence_and_tensor_parallelism_are_refused(actor, qwen_tokenizer, ring, tp, flag):
    policy = policy_actor(actor, qwen_tokenizer, ring=ring, tp=tp)
    policy.meds_setup(CONFIGS[0].to_dict())
    batch = openrlhf_batch(rollouts(qwen_tokenizer)[:1])
    with pytest.raises(ValueError, match=flag):
        policy.forward(batch.sequences, batch.action_mask, batch.attention_mask)


def test_window_too_large(actor, qwen_tokenizer):
    batch = openrlhf_batch(rollouts(qwen_tokenizer)[:1])
    with pytest.raises(ValueError, match=r"--meds\.layers=17"):
        run(actor, qwen_tokenizer, MedsConfig(layers=17), batch.sequences, batch.action_mask, batch.attention_mask)


# --- DeepSpeed ZeRO-3 (one gloo rank, child process) -----------------------------------------


def _zero3_worker(model_dir: str, out_path: str) -> None:
    """Run as `python tests/integration/test_actor_features.py zero3 MODEL_DIR OUT.npz` (see below)."""
    import deepspeed

    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    deepspeed.init_distributed(dist_backend="gloo")
    tokenizer = build_qwen_tokenizer()
    actor = Actor(model_dir, attn_implementation="eager", param_dtype="bf16")
    actor.model.float().eval()
    pairs = rollouts(tokenizer)
    batch = openrlhf_batch(pairs)
    results = {}
    for i, config in enumerate(CONFIGS):
        results[f"want{i}"] = response_features(actor.model, tokenizer, *zip(*pairs), config)
    # As OpenRLHF's strategy.prepare does: the engine replaces Actor.model. Persistence
    # threshold 0: the final norm is partitioned too, not only the lm_head.
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    actor.model, *_ = deepspeed.initialize(model=actor.model, config=ds_config)
    lm_head = af.hf_model(actor).lm_head
    results["partitioned"] = lm_head.weight.numel() == 0 and af.hf_model(actor).model.norm.weight.numel() == 0
    for i, config in enumerate(CONFIGS):
        results[f"got{i}"] = run(actor, tokenizer, config, batch.sequences, batch.action_mask, batch.attention_mask)[1]
    results["released"] = lm_head.weight.numel() == 0
    np.savez(out_path, **results)


@pytest.mark.slow
def test_zero3_gathers_the_partitioned_lm_head(tiny_qwen2, tmp_path):
    out = tmp_path / "zero3.npz"
    from openrlhf_meds.cpu.launch import cpu_env

    env = {**os.environ, **cpu_env()}  # the CPU patches in the child too (startup hook: no conftest in a script)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    cmd = [sys.executable, __file__, "zero3", tiny_qwen2.name_or_path, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = np.load(out)
    assert results["partitioned"] and results["released"]  # ZeRO-3 really partitioned them
    for i in range(len(CONFIGS)):
        np.testing.assert_allclose(results[f"got{i}"], results[f"want{i}"], rtol=1e-4, atol=1e-5)
        assert np.isnan(results[f"got{i}"][2]).all()


# --- the OpenRLHF internals this relies on -----------------------------------------------------


def test_openrlhf_internals_actor_features_rely_on():
    """openrlhf==0.11.2: PolicyModelActor.forward's signature and its call of the Actor; the
    Actor's position ids / packing; make_experience's dispatch of "forward" and the chunk
    order of async_run_method_batch / _flatten_results that actor_features mirrors."""
    from importlib.metadata import version

    from openrlhf.models.actor import Actor as ActorClass
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ray.launcher import BaseModelActor, RayActorGroup
    from openrlhf.trainer.ray.ppo_actor import PolicyModelActor

    assert version("openrlhf") == "0.11.2"
    upstream = PolicyModelActor.__ray_metadata__.modified_class
    assert issubclass(af.MedsPolicyModelActor.__ray_metadata__.modified_class, upstream)
    params = ["self", "sequences", "action_mask", "attention_mask", "packed_seq_lens", "mm_train_inputs_list"]
    # Ray's @ray.remote adds a `_ray_trace_ctx` keyword to every method.
    names = lambda fn: [p for p in inspect.signature(fn).parameters if p != "_ray_trace_ctx"]  # noqa: E731
    assert names(upstream.forward) == params
    assert names(af.MedsPolicyModelActor.__ray_metadata__.modified_class.forward) == params
    src = inspect.getsource(upstream.forward)
    assert "self.actor(" in src and "ring_attn_group=self.strategy.ring_attn_group" in src
    init = inspect.getsource(upstream.init_model_from_pretrained)
    assert (
        "self.tokenizer = get_tokenizer(" in init
        and "self.actor, self.actor_optim, self.actor_scheduler = strategy.prepare(" in init
    )

    # strategy.prepare puts the DeepSpeed engine in Actor.model (hf_model unwraps it).
    from openrlhf.utils.deepspeed.deepspeed import DeepspeedStrategy

    assert "model.model = engine" in inspect.getsource(DeepspeedStrategy._ds_init_train_model)

    actor_src = inspect.getsource(ActorClass.forward)
    assert "self.model(sequences, attention_mask=foward_attention_mask, position_ids=position_ids" in actor_src
    assert (
        "unpad_and_slice_tensor(" in actor_src
        and "action_log_probs = log_probs[:, -action_mask.shape[1] :]" in actor_src
    )

    make = inspect.getsource(RemoteExperienceMaker.make_experience)
    assert "self._dispatch_forward(\n            self.actor_model_group," in make
    assert "duplicate_factor = args.ds.ring_attn_size * args.ds.tensor_parallel_size" in make
    assert 'group.async_run_method_batch(method_name="forward"' in inspect.getsource(
        RemoteExperienceMaker._dispatch_forward
    )
    assert "ray.get(refs)[::duplicate_factor]" in inspect.getsource(RemoteExperienceMaker._flatten_results)
    batch_src = inspect.getsource(RayActorGroup.async_run_method_batch)
    assert "actor_idx = chunk_idx * self.duplicate_actors + j" in batch_src
    assert "for actor in self._actor_handlers" in inspect.getsource(RayActorGroup.async_run_method)
    assert "for i in tqdm(range(list_length)" in inspect.getsource(BaseModelActor.execute_batch)

    process = inspect.getsource(SamplesGenerator._process_response_into_experience)
    assert "self." not in process.split("\n", 1)[1]  # openrlhf_batch calls it with self=None
    assert "action_mask = action_mask[1:truncate_length]" in process


if __name__ == "__main__" and sys.argv[1:2] == ["zero3"]:
    torch.set_num_threads(1)
    _zero3_worker(*sys.argv[2:4])
