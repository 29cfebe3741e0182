"""`--meds.feature_source actor` through OpenRLHF's real experience maker, two policy actors
(DeepSpeed ZeRO-2 on gloo) and a real MemoryClient (two MemoryActor shards): the penalties land
on exactly the rollouts whose answer repeats a past error, after OpenRLHF's dynamic batching
has spread each prompt group over micro-batches (balanced by length, packed, on both ranks);
evaluation rollouts stay out of the memory.

All of it is OpenRLHF's own code (SamplesGenerator, RolloutRayActor.generate_responses,
SingleTurnAgentExecutor with the demo's reward file, RemoteExperienceMaker, RayActorGroup,
PPOTrainer.evaluate) except vLLM's generation: a script gives each rollout its text, so its
feature is predictable. The feature is the logit of the first answer token y* over the last
layers, read at the answer brace; every response is "The sum is \\boxed{y*}.", so the brace
sees the same text for all rollouts of a prompt and the feature depends only on y*: same answer,
same feature (up to bf16 noise), another answer, another row of the random lm_head.
"""

import asyncio
import itertools
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import torch
from openrlhf.trainer.ppo_trainer import BasePPOTrainer
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.trainer.ray.launcher import RayActorGroup
from openrlhf.trainer.ray.vllm_engine import RolloutRayActor
from openrlhf.utils import get_strategy
from openrlhf.utils.agent import SingleTurnAgentExecutor

from openrlhf_meds.cpu.launch import cpu_mode, run_train_ppo_ray
from openrlhf_meds.demo.task import EOS, REWARD_FILE, format_prompt, last_boxed
from openrlhf_meds.integration.actor_features import MedsPolicyModelActor
from openrlhf_meds.integration.rollout_actor import GROUP_ID, HAS_FEATURE, ROLLOUT
from openrlhf_meds.integration.trainer import MedsPPOTrainer
from openrlhf_meds.meds import MedsConfig
from openrlhf_meds.memory.client import MemoryClient

N = 5  # rollouts per prompt
ALPHA, BETA = 0.1, 0.15  # penalty min(alpha ln(|C| + 1), beta): |C| = 2, 3 below beta, 4+ capped
QUESTIONS = {"P0": ("What is 2 + 3?", 5), "P1": ("What is 4 + 4?", 8), "P2": ("What is 1 + 6?", 7)}
NO_ANSWER = None
GENERATE = dict(max_new_tokens=16, max_len=256, temperature=1.0)
# The rollouts' answers, per step and prompt (None: no \\boxed{} answer, hence no feature).
# Each error mode holds at most 3 rollouts when it is looked up: HDBSCAN (min_cluster_size 2)
# cannot split so few near-identical points, so the cluster sizes do not hang on bf16 noise.
STEPS = [
    # Step 0 fills the memory: P0's wrong answers form two clusters (6 x3, 9 x2), P1 is all
    # right, P2 has one wrong pair (3 x2) and a rollout without an answer.
    {"P0": [6, 6, 9, 6, 9], "P1": [8, 8, 8, 8, 8], "P2": [3, 7, NO_ANSWER, 3, 7]},
    # Step 1: repeats of 6 (|C| = 3), 9 (|C| = 2) and 3 (|C| = 2) are penalized; P1's first
    # mistakes are free (its wrong key is empty); right answers are never touched.
    {"P0": [6, 5, 9, 6, 5], "P1": [4, 4, 8, 8, 8], "P2": [3, 7, NO_ANSWER, 7, 7]},
    # Step 2, after an evaluation that answered 9 five times for P0: P0's 9 has |C| = 2 + 1,
    # P1's 4 (a past error now) 2, P2's 3 has 2 + 1.
    {"P0": [9, 5, 5, 5, 5], "P1": [8, 4, 8, 8, 8], "P2": [7, 7, 7, 7, 3]},
]
EVAL = {"P0": [9, 9, 9, 9, 9]}


def response_text(answer) -> str:
    return ("I am not sure." if answer is None else f"The sum is \\boxed{{{answer}}}.") + EOS


class _Parsed(Exception):
    pass


def openrlhf_args(argv):
    """OpenRLHF's args for `argv` exactly as train_ppo_ray's main builds and checks them (its
    parser, hierarchize and validation: e.g. --ds.packing_samples switches attention to
    flash_attention_2); caught at its first use, get_strategy, so nothing starts."""

    def capture(args):
        raise _Parsed(args)

    try:
        run_train_ppo_ray(argv, {"openrlhf.utils.get_strategy": capture})
    except _Parsed as parsed:
        return parsed.args[0]
    raise AssertionError("train_ppo_ray did not reach get_strategy")


class ScriptedLLM:
    """Stands in for the engine's vLLM AsyncLLMEngine: generation reads the prompt's next
    scripted text (`load`), so each rollout's answer is known."""

    def __init__(self, tokenizer):
        self.tokenizer, self.script = tokenizer, {}
        self.output_processor = SimpleNamespace(get_num_unfinished_requests=lambda: 0)

    def load(self, script: dict[str, list]):
        for name, answers in script.items():
            ids = self.tokenizer(format_prompt(QUESTIONS[name][0]), add_special_tokens=False)["input_ids"]
            self.script[tuple(ids)] = [response_text(a) for a in answers]

    async def generate(self, prompt, sampling_params, request_id):
        text = self.script[tuple(prompt["prompt_token_ids"])].pop(0)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        yield SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, text=text, finish_reason="stop", logprobs=None)])


def rollout_engine(llm):
    """OpenRLHF's own rollout actor (the stock one: with the actor source MEDS leaves the
    engines alone) as its __init__ sets it up, around the scripted LLM: generate_responses,
    SingleTurnAgentExecutor and the demo's reward file run unchanged."""
    engine = object.__new__(RolloutRayActor.__ray_metadata__.modified_class)
    engine.executor, engine.llm, engine._mm_pad_token_ids = SingleTurnAgentExecutor(REWARD_FILE), llm, None
    return engine


class Handle:
    """What SamplesGenerator calls on an engine's Ray handle (`engine.method.remote(...)`, an
    ObjectRef back), run in this process."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        method = getattr(self.engine, name)

        def remote(*args, **kwargs):
            out = method(*args, **kwargs)
            return ray.put(asyncio.run(out) if asyncio.iscoroutine(out) else out)

        return SimpleNamespace(remote=remote)


def prompt_batches(names):
    """A prompt dataloader's batches (OpenRLHF's: batch size 1, (datasources, prompts, labels, images))."""
    return [(["arith"], [format_prompt(QUESTIONS[p][0])], [str(QUESTIONS[p][1])], [None]) for p in names]


@pytest.fixture(scope="module")
def run(tiny_qwen2, qwen_tokenizer, tmp_path_factory, local_ray):
    """Ray with 2 logical GPUs, a MemoryActor, 2 MEDS policy actors (DeepSpeed ZeRO-2, gloo) and
    the MEDS trainer around them, as train_grpo builds it for `--meds.feature_source actor`."""
    tmp = tmp_path_factory.mktemp("actor_source")
    argv = [
        "--actor.model_name_or_path", tiny_qwen2.name_or_path,
        "--reward.remote_url", REWARD_FILE,
        "--algo.advantage.estimator", "group_norm",
        "--algo.kl.init_coef", "0",
        "--rollout.batch_size", str(len(QUESTIONS)),
        "--rollout.n_samples_per_prompt", str(N),
        "--rollout.micro_batch_size", "4",
        "--rollout.max_new_tokens", "16",
        # OpenRLHF's dynamic batching: micro-batches balanced by length (rollouts out of
        # order), packed into one row each (--ds.packing_samples), spread over both ranks.
        "--train.dynamic_batch_enable", "--ds.packing_samples",
        "--rollout.max_tokens_per_gpu", "120", "--train.max_tokens_per_gpu", "120",
        "--train.batch_size", str(len(QUESTIONS) * N), "--train.micro_batch_size", "4",
        "--actor.num_gpus_per_node", "2",
        "--vllm.num_engines", "1",
        "--ds.attn_implementation", "eager", "--ds.param_dtype", "bf16", "--ds.zero_stage", "2",
        "--ckpt.path", str(tmp / "ckpt"),
    ]  # fmt: skip
    config = MedsConfig(feature_source="actor", alpha=ALPHA, beta=BETA, memory_shards=2, memory_dir=str(tmp / "meds"))
    with cpu_mode():
        local_ray(num_cpus=4, num_gpus=2, object_store_mb=200)
        try:
            args = openrlhf_args(argv)  # after ray.init: train() starts Ray itself otherwise
            assert args.ds.attn_implementation == "flash_attention_2"
            args.ds.attn_implementation = "eager"  # no flash-attn on CPU; eager handles packed rows
            strategy = get_strategy(args)
            actors = RayActorGroup(1, 2, MedsPolicyModelActor, num_gpus_per_actor=1)
            ray.get(actors.async_init_model_from_pretrained(strategy, tiny_qwen2.name_or_path, 10, None))
            memory = MemoryClient.start(config, num_cpus=0)
            llm = ScriptedLLM(qwen_tokenizer)
            cls = MedsPPOTrainer.__ray_metadata__.modified_class
            trainer = object.__new__(cls)  # PPOTrainer.__init__ loads datasets; the rest is BasePPOTrainer's
            BasePPOTrainer.__init__(trainer, strategy, actors, None, None, None, None, qwen_tokenizer)
            trainer.eval_dataloader = prompt_batches(EVAL)
            prompts, engines = prompt_batches([p for s in STEPS for p in s]), [Handle(rollout_engine(llm))]
            trainer.samples_generator = SamplesGenerator(
                strategy, prompts, trainer.eval_dataloader, qwen_tokenizer, engines
            )
            trainer.meds_setup(config.to_dict(), memory)
            yield SimpleNamespace(trainer=trainer, llm=llm, memory=memory, actors=actors, tokenizer=qwen_tokenizer)
            memory.shutdown()
        finally:
            ray.shutdown()


def rollout(tokenizer, sample) -> tuple[str, int | None, bool]:
    """(prompt name, boxed answer or None, verifier's verdict) of a one-rollout sample, read
    back from its tokens."""
    text = tokenizer.decode(sample.sequences[0][sample.attention_mask[0].bool()])
    prompt, response = text.split("<|im_start|>assistant\n")
    name = next(p for p, (q, _) in QUESTIONS.items() if q in prompt)
    boxed = last_boxed(response)
    return name, None if boxed is None else int(boxed), bool(sample.scores[0] >= 0.5)


def expected_sizes(rollouts, past: Counter) -> np.ndarray:
    """|C| of each rollout if the memory clusters each prompt's past errors by answer: the
    number of earlier wrong rollouts of the prompt with the same answer, for wrong rollouts
    with an answer; 0 otherwise (right ones are not penalized under target=wrong)."""
    return np.array([0 if ok or a is None else past[(p, a)] for p, a, ok in rollouts], float)


def train_step_rollouts(run, global_step: int, past: Counter):
    """One training step's rollouts through OpenRLHF's samples generator and MEDS's experience
    maker; checks every rollout's penalty, shaped reward and the step metrics."""
    tok, maker = run.tokenizer, run.trainer.experience_maker
    run.llm.load(STEPS[global_step])
    samples, _, _, _ = run.trainer.samples_generator.generate_samples(**GENERATE)
    assert len(samples) == len(QUESTIONS) * N
    run.trainer._engines_at_step(global_step)  # as init_checkpoint_states / train_step do
    experiences = maker.make_experience_batch(samples)

    # OpenRLHF balanced the micro-batches by length: rollouts of a group are spread over
    # several micro-batches, out of order, and both ranks got micro-batches.
    assert len(experiences) >= 2 * len(run.actors._actor_handlers)
    for g in range(len(QUESTIONS)):
        assert len({k for k, e in enumerate(experiences) for i in e.index if i // N == g}) > 1
    order = list(itertools.chain.from_iterable(e.index for e in experiences))
    assert sorted(order) == list(range(len(samples)))
    pen, shaped = np.zeros(len(samples)), np.zeros(len(samples))
    pen[order] = torch.cat([e.info["meds_penalty"] for e in experiences]).numpy()
    shaped[order] = torch.cat([e.rewards for e in experiences]).numpy()
    for e in experiences:
        assert not {GROUP_ID, ROLLOUT, HAS_FEATURE} & set(e.info)  # consumed, not logged

    rollouts = [rollout(tok, s) for s in samples]
    sizes = expected_sizes(rollouts, past)
    want = np.where(sizes > 0, np.minimum(ALPHA * np.log(sizes + 1), BETA), 0.0)
    np.testing.assert_allclose(pen, want, rtol=1e-6, atol=1e-7, err_msg=f"step {global_step}: {rollouts}")
    correct = np.array([ok for _, _, ok in rollouts])
    np.testing.assert_allclose(shaped, np.where(correct, 1.0, -want), rtol=1e-6, atol=1e-7)  # r - pen, r / (1 + 0)
    m = maker.step_metrics
    assert m["meds/cluster_size_mean"] == pytest.approx(sizes.mean())
    assert m["meds/frac_penalized"] == pytest.approx((want > 0).mean())
    assert m["meds/frac_penalized_correct"] == 0.0
    assert m["meds/no_feature_frac"] == pytest.approx(np.mean([a is None for _, a, _ in rollouts]))
    past.update((p, a) for p, a, ok in rollouts if not ok and a is not None)
    return rollouts, want


@pytest.mark.slow
def test_penalties_land_on_repeated_errors_and_eval_stays_out(run):
    past, stored = Counter(), 0
    for global_step in range(2):
        rollouts, pen = train_step_rollouts(run, global_step, past)
        stored += sum(a is not None for _, a, _ in rollouts)  # every rollout with a feature
        run.memory.flush()
        assert run.memory.stats(reset=False)["vectors"] == stored
    # The script's design is what the test relies on: step 0 meets an empty memory, step 1
    # penalizes three clusters of sizes 3 (P0: 6) and 2 (P0: 9, P2: 3); P1's first errors go free.
    assert (pen > 0).sum() == 4 and sorted(set(np.round(pen, 4))) == [0.0, 0.1099, 0.1386]

    # Evaluation: P0 answers 9 five times. With the actor source no forward runs, so nothing
    # is submitted: the memory does not change, and the next step's 9s meet |C| = 3, not 8.
    run.llm.load(EVAL)
    logs = run.trainer.evaluate(2, **GENERATE, n_samples_per_prompt=N)
    assert logs["eval_num_samples"] == N and logs["eval_arith_pass1"] == 0.0  # the scripted rollouts ran
    assert run.trainer.experience_maker.step == 2
    run.memory.flush()
    assert run.memory.stats(reset=False)["vectors"] == stored

    rollouts, pen = train_step_rollouts(run, 2, past)
    nines = [i for i, (p, a, _) in enumerate(rollouts) if (p, a) == ("P0", 9)]
    np.testing.assert_allclose(pen[nines], ALPHA * np.log(4))  # 2 (step 0) + 1 (step 1), no eval 9s
    assert (pen > 0).sum() == 3  # P0's 9, P1's 4 (a past error since step 1), P2's 3
