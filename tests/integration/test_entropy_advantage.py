"""GRPO with entropy adjustment (`--entropy_adv.coef`): OpenRLHF's own training step with the
bonus installed gives the loss and gradients of the formula A_t + min(coef * H_t, |A_t| / kappa)
computed directly from the model's logits; with coef 0 it is OpenRLHF's unmodified step.

The step is `ActorPPOTrainer.training_step` itself on a tiny real Qwen2 loaded by OpenRLHF's
`Actor`, with OpenRLHF's `PolicyLoss`; only DeepSpeed is left out (`strategy.backward` is a plain
`loss.backward()`, the optimizer step does nothing, so the gradients can be read).
"""

import argparse
import inspect
from types import SimpleNamespace

import pytest
import ray.cloudpickle as cloudpickle
import torch
from openrlhf.models import Actor, PolicyLoss
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.trainer.ray import ppo_actor
from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer

from openrlhf_meds.integration import entropy_advantage as ea
from openrlhf_meds.integration import openrlhf
from openrlhf_meds.meds import MedsConfig

PAD = 151643
TEXTS = [
    ("What is 2 + 2?", " 2 + 2 = 4, so \\boxed{4}.<|endoftext|>"),
    ("Compute 1/2 + 0.", "It is $\\boxed{\\frac{1}{2}}$ I think<|endoftext|>"),
    ("Say hi.", "hi<|endoftext|>"),
    ("What is 3 * 3?", "\\boxed{9} because 3 * 3 = 9.<|endoftext|>"),
]
OFFICIAL = ea.EntropyAdvantage(coef=0.4, kappa=2.0)


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(autouse=True)
def eager_entropy():
    """OpenRLHF's `compute_entropy` is `@torch.compile`d: the same function, run eagerly here
    (inductor's first CPU compile alone takes ~35 s on this machine)."""
    with torch._dynamo.config.patch(disable=True):
        yield


@pytest.fixture(scope="module")
def actor(tiny_qwen2):
    """OpenRLHF's Actor on the tiny model's files, in float32 so the comparisons are tight, with
    its lm_head scaled up 30x: the random model's next-token distributions are then peaked
    (entropies of ~1.4-3.5 nats instead of ln(vocabulary) ~ 11.9, where the entropy's gradient
    vanishes), so keeping or dropping the entropy's gradient makes a visible difference."""
    actor = Actor(tiny_qwen2.name_or_path, attn_implementation="eager", param_dtype="bf16")
    actor.model.float()
    with torch.no_grad():
        actor.model.lm_head.weight.mul_(30)
    return actor


def batch(tokenizer, actor) -> Experience:
    """One micro-batch as OpenRLHF builds it from vLLM responses, with old log-probs near the
    current policy's (so some ratios are clipped, some not) and advantages of both signs and
    zero (an all-equal group)."""
    experiences = []
    for prompt, response in TEXTS:
        p, r = tokenizer.encode(prompt), tokenizer.encode(response)
        reply = dict(
            observation_tokens=p + r,
            action_ranges=[(len(p), len(p) + len(r))],
            reward=0.0,
            scores=0.0,
            rollout_log_probs=None,
            prompt=prompt,
            label="",
        )
        experiences.append(SamplesGenerator._process_response_into_experience(None, reply, max_len=4096))
    exp = Experience.concat_experiences(experiences, PAD)
    mask = exp.action_mask.float()
    exp.advantages = torch.tensor([1.3, -0.9, 0.0, -2.5])[:, None] * mask
    with torch.no_grad():
        current = actor(exp.sequences, exp.action_mask, exp.attention_mask)
    generator = torch.Generator().manual_seed(0)
    exp.action_log_probs = (current + 0.15 * torch.randn(mask.shape, generator=generator)) * mask
    exp.info = {}
    return exp


def trainer(actor, policy_loss: PolicyLoss) -> ActorPPOTrainer:
    """An ActorPPOTrainer with the attributes `training_step` reads, as `__init__` sets them;
    DeepSpeed's part (backward, optimizer step) is a plain backward and no step."""
    t = object.__new__(ActorPPOTrainer)
    t.actor, t.actor_loss_fn, t.aux_loss, t.ema_model, t.replay_buffer, t.actor_optim = (
        actor,
        policy_loss,
        False,
        None,
        None,
        None,
    )
    t.args = SimpleNamespace(
        actor=SimpleNamespace(entropy_coef=0.0, aux_loss_coef=0.0),
        algo=SimpleNamespace(kl=SimpleNamespace(use_loss=False)),
        train=SimpleNamespace(dynamic_batch_enable=False),
    )
    t.strategy = SimpleNamespace(
        ring_attn_group=None,
        backward=lambda loss, model, optimizer: loss.backward(),
        optimizer_step=lambda *args, **kwargs: None,
        get_grad_norm=lambda model: 0.0,
    )
    t.actor_scheduler = SimpleNamespace(get_last_lr=lambda: [1e-6])
    return t


def loss_info(exp) -> dict:
    return dict(
        dp_size=1,
        batch_num_tokens=exp.action_mask.sum().float(),
        global_batch_size=torch.tensor(float(len(exp.action_mask))),
    )


def official_policy_loss() -> PolicyLoss:
    """The GRPO-with-entropy baseline's loss: clip 0.2/0.2, dual clip 10, seq-mean-token-mean."""
    return PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=10.0, token_level_loss=False)


def openrlhf_step(actor, exp, settings: ea.EntropyAdvantage | None):
    """`ActorPPOTrainer.training_step` (with the bonus installed unless settings is None):
    (policy loss, gradients)."""
    actor.model.zero_grad(set_to_none=True)
    t = trainer(actor, official_policy_loss())
    handle = ea.install(t, settings) if settings is not None else None
    try:
        status = t.training_step(exp, kl_ctl=0.0, step=0, loss_batch_info=loss_info(exp))
    finally:
        if handle is not None:
            handle.remove()
    grads = {n: p.grad.clone() for n, p in actor.model.named_parameters() if p.grad is not None}
    return status["metrics"]["policy_loss"], grads


def direct_step(actor, exp, coef, kappa, detach=True, shift=0):
    """The formula from the logits of a plain forward: log-probs and entropy of the response
    tokens, A + min(coef * H, |A| / kappa), OpenRLHF's PolicyLoss on that. `shift=1` takes each
    token's entropy from the position after it (a misalignment, to show it would be seen)."""
    actor.model.zero_grad(set_to_none=True)
    seq, att, mask = exp.sequences, exp.attention_mask, exp.action_mask
    position_ids = (att.long().cumsum(-1) - 1).masked_fill(att == 0, 1)
    logits = actor.model(seq, attention_mask=att, position_ids=position_ids)["logits"].float()
    logp_all = torch.log_softmax(logits[:, :-1], dim=-1)  # position j predicts token j + 1
    n = mask.shape[1]
    logp = logp_all.gather(-1, seq[:, 1:, None])[..., 0][:, -n:] * mask
    entropy = -(logp_all.exp() * logp_all).sum(-1).roll(-shift, dims=1)[:, -n:]
    h = entropy.detach() if detach else entropy
    adv = exp.advantages + torch.minimum(coef * h, exp.advantages.abs() / kappa)
    loss = official_policy_loss()(logp, exp.action_log_probs, adv, action_mask=mask, **loss_info(exp))[0]
    loss.backward()
    grads = {name: p.grad.clone() for name, p in actor.model.named_parameters() if p.grad is not None}
    under_cap = (coef * entropy.detach() < exp.advantages.abs() / kappa) & mask
    return loss.detach(), grads, under_cap


def grad_scale(grads) -> float:
    return max(g.abs().max().item() for g in grads.values())


def assert_grads_close(got, want, rel=None):
    """Equal gradients; with `rel`, within rel x the largest gradient entry (float32, summed in
    another order)."""
    assert got.keys() == want.keys() and got
    tol = dict(rtol=0, atol=0) if rel is None else dict(rtol=rel, atol=rel * grad_scale(want))
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=lambda m, name=name: f"{name}: {m}", **tol)


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_bonus_formula_and_cap():
    adv = torch.tensor([[-1.0, 1.0, 0.0, -0.1]])
    entropy = torch.tensor([[0.5, 5.0, 3.0, 2.0]], requires_grad=True)
    bonus = OFFICIAL.bonus(adv, entropy)
    # min(0.4 H, |A| / 2): the slope, the cap, nothing for A = 0, the cap on a small negative A
    torch.testing.assert_close(bonus, torch.tensor([[0.2, 0.5, 0.0, 0.05]]))
    assert not bonus.requires_grad  # H is detached
    assert (adv + bonus <= adv / 2)[adv < 0].all()  # a negative advantage keeps at least half its size


def test_training_step_with_the_bonus_equals_the_formula(actor, qwen_tokenizer):
    exp = batch(qwen_tokenizer, actor)
    loss, grads = openrlhf_step(actor, exp, OFFICIAL)
    want_loss, want, under_cap = direct_step(actor, exp, coef=0.4, kappa=2.0)
    # both sides of the min occur: the slope on some tokens of rows 0 and 3, the cap on row 1
    assert under_cap[[0, 3]].any(dim=1).all() and not under_cap[1].any()
    # float32 on peaked logits: OpenRLHF's entropy (logsumexp - sum p * logits) and this one
    # (-sum p log p) differ by ~1e-5 nats, the losses by ~6e-6.
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=2e-5)
    assert_grads_close(grads, want, rel=1e-3)
    # The comparison tells the variants apart: the entropy of the next token instead moves the
    # loss, no bonus or the entropy left in the graph move the gradients, far past the tolerance.
    _, plain = openrlhf_step(actor, exp, None)
    _, undetached, _ = direct_step(actor, exp, coef=0.4, kappa=2.0, detach=False)
    shifted_loss, _, _ = direct_step(actor, exp, coef=0.4, kappa=2.0, shift=1)
    assert abs(shifted_loss - want_loss) > 50 * 2e-5
    assert max_diff(plain, want) > 1e-2 * grad_scale(want)
    assert max_diff(undetached, want) > 1e-2 * grad_scale(want)


def test_coef_zero_is_openrlhfs_unmodified_step(actor, qwen_tokenizer):
    exp = batch(qwen_tokenizer, actor)
    loss, grads = openrlhf_step(actor, exp, ea.EntropyAdvantage(coef=0.0))
    plain_loss, plain = openrlhf_step(actor, exp, None)
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    assert_grads_close(grads, plain)
    # and the plain step is the formula with coef 0
    want_loss, want, _ = direct_step(actor, exp, coef=0.0, kappa=2.0)
    torch.testing.assert_close(plain_loss, want_loss, rtol=0, atol=2e-5)


def test_missing_entropy_names_the_flag(actor, qwen_tokenizer):
    exp = batch(qwen_tokenizer, actor)
    t = trainer(actor, official_policy_loss())
    t.args.actor.entropy_coef = None  # OpenRLHF then computes no entropy
    with pytest.raises(ValueError, match="--actor.entropy_coef 0"):
        ea.install(t, OFFICIAL)
    t.args.actor.entropy_coef = 0.0
    handle = ea.install(t, OFFICIAL)
    try:
        t.args.actor.entropy_coef = None
        with pytest.raises(RuntimeError, match="returned no entropy.*--actor.entropy_coef 0"):
            t.training_step(exp, kl_ctl=0.0, step=0, loss_batch_info=loss_info(exp))
    finally:
        handle.remove()


def settings_of(argv: list[str]) -> ea.EntropyAdvantage:
    """The settings `--entropy_adv.*` flags anywhere in `argv` give (other flags ignored)."""
    known, _ = ea.add_entropy_advantage_args(argparse.ArgumentParser(add_help=False)).parse_known_args(argv)
    return ea.settings_from_args(known)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--entropy_adv.coef", "-1"], "--entropy_adv.coef: must be a number >= 0"),
        (["--entropy_adv.coef", "0.4", "--entropy_adv.kappa", "0"], "--entropy_adv.kappa: must be a number > 0"),
        (["--entropy_adv.kappa", "3"], "--entropy_adv.kappa 3 has no effect with --entropy_adv.coef 0"),
    ],
)
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        settings_of(argv)


def test_flags_parse():
    assert settings_of(["--x", "1", "--entropy_adv.coef", "0.4"]) == OFFICIAL
    assert settings_of([]) == ea.EntropyAdvantage(coef=0.0) and not settings_of([]).enabled
    assert settings_of(["--entropy_adv.coef", "0.1", "--entropy_adv.kappa", "4"]).kappa == 4.0


@pytest.mark.parametrize("source", ["none", "vllm", "actor"])
def test_replacements_add_the_policy_actor_on_the_one_in_use(source):
    config = MedsConfig(enable=False, diversity=False) if source == "none" else MedsConfig(feature_source=source)
    replace = openrlhf.replacements(config)
    off = openrlhf.replacements(config, entropy=ea.EntropyAdvantage(coef=0.0))
    assert set(off) == set(replace) and off.get(openrlhf.POLICY_ACTOR) is replace.get(openrlhf.POLICY_ACTOR)
    out = openrlhf.replacements(config, entropy=OFFICIAL)
    assert set(out) <= set(openrlhf.REPLACED) and set(out) == set(replace) | {openrlhf.POLICY_ACTOR}
    cls = out[openrlhf.POLICY_ACTOR].__ray_metadata__.modified_class
    base = replace.get(openrlhf.POLICY_ACTOR, ppo_actor.PolicyModelActor).__ray_metadata__.modified_class
    assert issubclass(cls, ea.EntropyAdvantageActorMixin) and issubclass(cls, base)
    assert cls.entropy_adv == OFFICIAL
    assert cloudpickle.loads(cloudpickle.dumps(cls)).entropy_adv == OFFICIAL  # travels to the Ray workers
    # The flag check runs in the replaced hierarchize, with MEDS's, before OpenRLHF's.
    flat = argparse.Namespace(**{"actor.entropy_coef": None, "reward.remote_url": "r.py", "vllm.num_engines": 1})
    with pytest.raises(SystemExit, match="--entropy_adv.coef 0.4 needs .* --actor.entropy_coef 0"):
        out[openrlhf.HIERARCHIZE](flat)


def test_openrlhf_internals_the_entropy_bonus_relies_on():
    """Contract (patches/README.md): where the entropy comes from and where the advantages go."""
    step = _squash(inspect.getsource(ActorPPOTrainer.training_step))
    forward = (
        "action_log_probs, output = self.actor( sequences, action_mask, attention_mask=attention_mask, "
        "return_output=True,"
    )
    loss = "self.actor_loss_fn( action_log_probs, old_action_log_probs, advantages,"
    assert forward in step and loss in step and step.index(forward) < step.index(loss)
    assert step.count("self.actor_loss_fn(") == 1 and step.count("self.actor(") == 1
    assert "return_entropy=self.args.actor.entropy_coef is not None," in step
    # the bonus lines the entropy up with the actions as OpenRLHF's entropy loss does
    assert "output.entropy[:, -experience.action_mask.shape[1] :]," in step
    assert 'setattr(output, "entropy", entropy[:, :-1])' in inspect.getsource(Actor.forward)
    assert list(inspect.signature(PolicyLoss.forward).parameters)[:4] == [
        "self",
        "log_probs",
        "old_log_probs",
        "advantages",
    ]
    init = _squash(inspect.getsource(ActorPPOTrainer.__init__))
    assert "self.actor = actor" in init and "self.actor_loss_fn = PolicyLoss(" in init
    policy = ppo_actor.PolicyModelActor.__ray_metadata__.modified_class
    assert "self.trainer = ActorPPOTrainer(" in inspect.getsource(policy.init_model_from_pretrained)
