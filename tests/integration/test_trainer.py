"""MedsExperienceMaker on OpenRLHF's real RemoteExperienceMaker and args: the penalties
fetched from a real MemoryActor change the rewards, and the advantages follow the shaped
rewards; plus the contract with the OpenRLHF internals the trainer subclasses."""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import torch
from openrlhf.trainer.ppo_trainer import BasePPOTrainer, PPOTrainer
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

from openrlhf_meds.integration.openrlhf import run_train_ppo_ray
from openrlhf_meds.integration.rollout_actor import GROUP_ID, HAS_FEATURE, ROLLOUT
from openrlhf_meds.integration.trainer import MedsExperienceMaker, group_metrics
from openrlhf_meds.meds import MedsConfig, group_advantages, shape_rewards
from openrlhf_meds.memory.client import MemoryClient

N = 4  # rollouts per prompt


class _Parsed(Exception):
    pass


def openrlhf_args(argv):
    """OpenRLHF's own args namespace for `argv`, as train_ppo_ray builds it (its parser and
    hierarchize; stops before anything starts)."""
    from openrlhf.utils import config

    hierarchize = config.hierarchize

    def capture(flat):
        raise _Parsed(hierarchize(flat))

    try:
        run_train_ppo_ray(argv, {"openrlhf.utils.config.hierarchize": capture})
    except _Parsed as parsed:
        return parsed.args[0]
    raise AssertionError("train_ppo_ray did not parse its arguments")


@pytest.fixture(scope="module")
def memory(tmp_path_factory, local_ray):
    local_ray()
    client = MemoryClient.start(MedsConfig(memory_dir=str(tmp_path_factory.mktemp("meds"))), num_cpus=0)
    yield client
    client.shutdown()
    ray.shutdown()


def experience(rewards, scores, gids, rollouts, has_feature, index):
    n, t = len(rewards), 6
    return Experience(
        sequences=torch.ones(n, t, dtype=torch.long),
        attention_mask=torch.ones(n, t, dtype=torch.long),
        action_mask=torch.ones(n, t - 1, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        scores=torch.tensor(scores, dtype=torch.float32),
        kl=torch.zeros(n, t - 1),
        index=index,
        info={GROUP_ID: torch.tensor(gids), ROLLOUT: torch.tensor(rollouts), HAS_FEATURE: torch.tensor(has_feature)},
    )


@pytest.mark.slow
def test_shaped_rewards_drive_group_advantages(memory):
    args = openrlhf_args(
        [
            "--actor.model_name_or_path",
            "x",
            "--reward.remote_url",
            "r.py",
            "--algo.advantage.estimator",
            "group_norm",
            "--rollout.n_samples_per_prompt",
            str(N),
        ]
    )
    maker = MedsExperienceMaker(
        None,
        None,
        None,
        None,
        FixedKLController(0.0),
        SimpleNamespace(args=args),
        None,
        meds=MedsConfig(),
        memory=memory,
    )
    rng = np.random.default_rng(0)
    mode = rng.normal(size=6)
    wrong = np.zeros(N, bool)
    # Step 0: four wrong rollouts of one error mode enter the memory (first visit: free).
    gid0, ack = memory.submit("p", 0, mode + rng.normal(size=(N, 6)) * 0.01, wrong)
    ray.get(ack)
    assert (memory.fetch([gid0])[0][1] == 0).all()
    # Step 1: the same mistake 3 times (penalized) and one right answer (feature elsewhere);
    # a second prompt whose group never went to the memory (gid -1, e.g. filtered).
    feats = np.vstack([mode + rng.normal(size=(3, 6)) * 0.01, -mode])
    correct = np.array([False, False, False, True])
    gid1, ack = memory.submit("p", 1, feats, correct)
    ray.get(ack)
    rewards = correct.astype(np.float32)
    # Two micro-batches, rollouts out of order (OpenRLHF's `index` restores the groups).
    exps = [
        experience(rewards[[0, 3]], correct[[0, 3]], [gid1, gid1], [0, 3], [1, 1], [0, 3]),
        experience(
            np.r_[rewards[[1, 2]], [1, 0, 0, 1]],
            np.r_[correct[[1, 2]], [1, 0, 0, 1]],
            [gid1, gid1, -1, -1, -1, -1],
            [1, 2, 0, 1, 2, 3],
            [1, 1, 0, 0, 0, 0],
            [1, 2, 4, 5, 6, 7],
        ),
    ]
    out = maker.compute_advantages_and_returns(exps)

    pen = np.r_[np.full(3, 0.1 * np.log(N + 1)), 0.0]  # |C| = the 4 stored errors; below beta
    shaped = np.r_[shape_rewards(rewards, correct, pen), [1, 0, 0, 1]]
    got = np.r_[
        out[0].rewards.numpy()[[0]], out[1].rewards.numpy()[:2], out[0].rewards.numpy()[[1]], out[1].rewards.numpy()[2:]
    ]
    np.testing.assert_allclose(got, shaped, rtol=1e-6)
    assert got[0] < 0 and got[3] == 1.0  # wrong: 0 - pen; correct: 1 / (1 + 0)
    adv = group_advantages(shaped, N, eps=1e-9)
    got_adv = np.r_[
        out[0].advantages[0, 0],
        out[1].advantages[0, 0],
        out[1].advantages[1, 0],
        out[0].advantages[1, 0],
        out[1].advantages[2:, 0],
    ]
    np.testing.assert_allclose(got_adv, adv, rtol=1e-5, atol=1e-6)
    assert all(GROUP_ID not in e.info and ROLLOUT not in e.info for e in out)  # not logged as metrics
    m = maker.step_metrics
    assert m["meds/frac_penalized"] == pytest.approx(3 / 8)
    assert m["meds/frac_penalized_correct"] == 0.0  # target=wrong
    assert m["meds/penalty_mean"] == pytest.approx(pen.sum() / 8)
    assert m["meds/no_feature_frac"] == pytest.approx(4 / 8)
    assert m["meds/raw_reward_mean"] == pytest.approx(3 / 8)
    assert m["meds/shaped_reward_mean"] == pytest.approx(shaped.mean())
    assert (m["groups/kept"], m["groups/all_wrong"], m["groups/all_wrong_nonzero_adv"]) == (2, 0, 0)


def test_group_metrics_count_all_wrong_groups_that_still_move():
    """groups/*: rollouts are regrouped by OpenRLHF's `index` across micro-batches; an all-wrong
    group counts its rollouts whose advantage is not zero on some response token."""
    exps = [
        experience([0, 0, 1], [0, 0, 1], [0] * 3, [0] * 3, [1] * 3, [0, 5, 6]),
        experience([0] * 5, [0] * 5, [0] * 5, [0] * 5, [1] * 5, [1, 2, 3, 4, 7]),
    ]
    # group 0 (index 0-3) all wrong: rollouts 0 and 1 moved by MEDS; group 1 (4-7) mixed
    exps[0].advantages = torch.tensor([[0.0] * 4 + [-0.7], [0.3] * 5, [0.9] * 5])
    exps[1].advantages = torch.tensor([[0.4] * 5, [0.0] * 5, [0.0] + [-0.2] * 4, [0.5] * 5, [0.1] * 5])
    exps[1].action_mask[2, 1:] = False  # rollout 3's values are on masked tokens only: it did not move
    assert group_metrics(exps, 4) == {"groups/kept": 2.0, "groups/all_wrong": 1.0, "groups/all_wrong_nonzero_adv": 2.0}
    exps[0].advantages[0] = 0.0  # rollout 0
    assert group_metrics(exps, 4)["groups/all_wrong_nonzero_adv"] == 1.0


def test_rollouts_without_group_tags_are_refused(memory):
    maker = MedsExperienceMaker(
        None,
        None,
        None,
        None,
        FixedKLController(0.0),
        SimpleNamespace(args=SimpleNamespace(algo=SimpleNamespace(advantage=SimpleNamespace(estimator="group_norm")))),
        None,
        meds=MedsConfig(),
        memory=memory,
    )
    e = experience([1.0], [1.0], [0], [0], [1], [0])
    del e.info[GROUP_ID]
    with pytest.raises(RuntimeError, match="carry no memory group id"):
        maker.shape_rewards([e])


def test_actor_source_semantic_features_embed_each_response(qwen_tokenizer, tiny_encoder):
    """--meds.features semantic with --meds.feature_source actor: the trainer embeds each
    sample's response (the masked tail of its sequence), one array per Experience."""
    from openrlhf_meds.integration.actor_features import semantic_features
    from openrlhf_meds.meds.semantic import SemanticEncoder

    tok, pad = qwen_tokenizer, 151643
    maker = object.__new__(MedsExperienceMaker)
    maker.meds = MedsConfig(features="semantic", embedding_model=tiny_encoder, feature_source="actor")
    maker.tokenizer = tok
    batches = [["So \\boxed{5}.", "No idea at all, sorry."], ["It is \\boxed{7}."]]
    samples_list = []
    for texts in batches:
        ids = [tok.encode(t) for t in texts]
        width = max(map(len, ids))
        sequences, mask = torch.full((len(ids), 3 + width), pad), torch.zeros(len(ids), width)
        for j, r in enumerate(ids):  # 3 prompt tokens, the response right padded
            sequences[j, 3 : 3 + len(r)], mask[j, : len(r)] = torch.tensor(r), 1
        samples_list.append(SimpleNamespace(sequences=sequences, action_mask=mask))
    feats = semantic_features(maker, samples_list)
    assert [f.shape for f in feats] == [(2, 32), (1, 32)]
    want = SemanticEncoder(tiny_encoder).rollout_features(tok, [tok.encode(t) for b in batches for t in b])
    assert np.isnan(want[1]).all() and not np.isnan(want[[0, 2]]).any()
    np.testing.assert_allclose(np.concatenate(feats), want, atol=1e-6)


def test_openrlhf_internals_the_trainer_relies_on():
    """Contract with openrlhf 0.11.2 (patches/README.md): fails loudly if upstream changes."""
    base = PPOTrainer.__ray_metadata__.modified_class
    assert issubclass(base, BasePPOTrainer)
    for name, params in {
        "train_step": ["rollout_samples", "global_step"],
        "init_checkpoint_states": [],
        "save_logs_and_checkpoints": ["global_step", "logs_dict", "client_states"],
        "evaluate": ["global_step"],
    }.items():
        got = list(inspect.signature(getattr(base, name)).parameters)[1:]
        assert got[: len(params)] == params, (name, got)
    src = inspect.getsource(BasePPOTrainer.__init__)
    assert "self.experience_maker = RemoteExperienceMaker(" in src
    for attr in (
        "actor_model_group",
        "critic_model_group",
        "reward_model_group",
        "reference_model_group",
        "kl_ctl",
        "tokenizer",
        "vllm_engines",
    ):
        assert f"self.{attr} =" in src, attr
    assert list(inspect.signature(RemoteExperienceMaker.__init__).parameters)[1:8] == [
        "actor_model_group",
        "critic_model_group",
        "reward_model_group",
        "initial_model_group",
        "kl_controller",
        "strategy",
        "tokenizer",
    ]
    src = inspect.getsource(RemoteExperienceMaker.make_experience_batch)
    assert "self.compute_advantages_and_returns(experiences)" in src
    src = inspect.getsource(RemoteExperienceMaker.compute_advantages_and_returns)
    assert "apply_length_penalties(experiences, args)" in src and "experience.rewards" in src
    # The demo's turn-taking trainer (demo/turns.py) hands the turn over at the end of
    # save_logs_and_checkpoints: fit has timed every phase of the step by then, and evaluates
    # after it (so a run evaluates in its own turn, untimed).
    src = inspect.getsource(base.fit)
    order = ["t_gen_start = time.time()", "generate_samples(", '"timing/step_total"', "self.save_logs_and_checkpoints("]
    assert [src.index(s) for s in order] == sorted(src.index(s) for s in order)
    assert src.index("self.save_logs_and_checkpoints(") < src.index("self.evaluate(")
    # The trainer's checkpoint states carry the global step the memory snapshot is named by.
    assert '"global_step"' in inspect.getsource(BasePPOTrainer.init_checkpoint_states)
