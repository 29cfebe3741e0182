"""GRPO with entropy adjustment: a per-token advantage bonus from the policy's entropy.

    A_t <- A_t + min(coef * H_t, |A_t| / kappa)

`H_t` is the entropy of the policy at response token t, computed in OpenRLHF's own training
forward and detached (the bonus shapes the advantage; no gradient flows through it). The
official baseline run uses coef 0.4 and kappa 2. The cap |A_t| / kappa bounds the bonus by a
fraction of the advantage: with kappa 2 a negative advantage keeps at least half its size, so
a wrong rollout stays discouraged; a token of an all-equal group (A_t = 0) gets no bonus.

How it gets into OpenRLHF 0.11.2 (each point checked by `tests/integration/test_entropy_advantage.py`):
- `ActorPPOTrainer.training_step` calls the Actor with `return_output=True,
  return_entropy=args.actor.entropy_coef is not None` (so `--actor.entropy_coef 0` computes the
  entropy without adding an entropy loss) and then `self.actor_loss_fn(action_log_probs,
  old_action_log_probs, advantages, ...)`.
- `EntropyAdvantagePolicyActor` (from `policy_actor`), a subclass of the policy actor class the run
  uses, installs two things on its `ActorPPOTrainer` after `init_model_from_pretrained`: a
  forward hook on the Actor that keeps `output.entropy` of the training forward, and
  `EntropyAdvantageLoss` around `actor_loss_fn`, which adds the bonus to `advantages` before
  OpenRLHF's `PolicyLoss` runs. Nothing else of the training step changes.

Flags (`add_entropy_advantage_args`): `--entropy_adv.coef` (0 = off, the default) and
`--entropy_adv.kappa` (default 2). `integration.openrlhf.replacements` puts `policy_actor` on
the policy actor class the run uses and runs `check_entropy_flags` with the other flag checks.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # train_grpo imports this module before CPU mode sets torch's threads: keep it light
    import torch

COEF_FLAG = "--entropy_adv.coef"
KAPPA_FLAG = "--entropy_adv.kappa"
DEFAULT_KAPPA = 2.0


@dataclass(frozen=True)
class EntropyAdvantage:
    """The bonus `min(coef * H_t, |A_t| / kappa)`; `coef == 0` turns it off."""

    coef: float = 0.0
    kappa: float = DEFAULT_KAPPA

    def __post_init__(self):
        if not (isinstance(self.coef, (int, float)) and math.isfinite(self.coef) and self.coef >= 0):
            raise ValueError(f"{COEF_FLAG}: must be a number >= 0 and finite, got {self.coef!r}")
        if not (isinstance(self.kappa, (int, float)) and math.isfinite(self.kappa) and self.kappa > 0):
            raise ValueError(f"{KAPPA_FLAG}: must be a number > 0 and finite, got {self.kappa!r}")

    @property
    def enabled(self) -> bool:
        """Whether the bonus is on."""
        return self.coef > 0

    def bonus(self, advantages: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """`min(coef * H, |A| / kappa)`, elementwise; the entropy is detached."""
        import torch

        return torch.minimum(self.coef * entropy.detach().to(advantages.dtype), advantages.abs() / self.kappa)


def add_entropy_advantage_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--entropy_adv.coef` and `--entropy_adv.kappa` (defaults None = not given)."""
    group = parser.add_argument_group(
        "GRPO with entropy adjustment",
        "Per-token advantage bonus A_t += min(coef * H_t, |A_t| / kappa), H_t the policy's entropy at "
        "token t (detached). Needs OpenRLHF's entropy: --actor.entropy_coef 0 computes it without an "
        "entropy loss.",
    )
    group.add_argument(
        COEF_FLAG,
        dest="entropy_adv.coef",
        type=float,
        default=None,
        metavar="X",
        help="bonus slope coef (the official run: 0.4); 0 turns the bonus off (default 0)",
    )
    group.add_argument(
        KAPPA_FLAG,
        dest="entropy_adv.kappa",
        type=float,
        default=None,
        metavar="X",
        help=f"the bonus is at most |A_t| / kappa (default {DEFAULT_KAPPA:g}, the official run's)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> EntropyAdvantage:
    """The settings from parsed flags; ValueError naming the flag for a bad value, and for
    `--entropy_adv.kappa` given while the bonus is off (it would have no effect)."""
    coef = getattr(args, "entropy_adv.coef", None)
    kappa = getattr(args, "entropy_adv.kappa", None)
    settings = EntropyAdvantage(coef=0.0 if coef is None else coef, kappa=DEFAULT_KAPPA if kappa is None else kappa)
    if kappa is not None and not settings.enabled:
        raise ValueError(f"{KAPPA_FLAG} {kappa:g} has no effect with {COEF_FLAG} {settings.coef:g}: the bonus is off")
    return settings


def check_entropy_flags(flat: argparse.Namespace, settings: EntropyAdvantage) -> None:
    """The bonus needs the per-token entropy that OpenRLHF computes only when
    `--actor.entropy_coef` is given; SystemExit naming both flags otherwise."""
    if settings.enabled and getattr(flat, "actor.entropy_coef", None) is None:
        raise SystemExit(
            f"error: {COEF_FLAG} {settings.coef:g} needs OpenRLHF's per-token entropy: add "
            "--actor.entropy_coef 0 (it computes the entropy and adds no entropy loss)"
        )


class EntropyCapture:
    """Forward hook (with kwargs) on an `openrlhf.models.Actor`: keeps `output.entropy` of
    each forward called with `return_output=True, return_entropy=True` (the training forward)."""

    def __init__(self):
        self.entropy: torch.Tensor | None = None

    def __call__(self, module, args, kwargs, output):
        if kwargs.get("return_entropy") and isinstance(output, tuple) and len(output) == 2:
            self.entropy = getattr(output[1], "entropy", None)

    def pop(self) -> torch.Tensor:
        """The entropy of the last training forward ([batch, sequence - 1]); cleared, so a
        loss call never reuses the entropy of an earlier micro-batch."""
        entropy, self.entropy = self.entropy, None
        if entropy is None:
            raise RuntimeError(
                f"{COEF_FLAG}: the policy's training forward returned no entropy; pass --actor.entropy_coef 0 "
                "(OpenRLHF computes the entropy only when that flag is given)"
            )
        return entropy


class EntropyAdvantageLoss:
    """OpenRLHF's `PolicyLoss` with the entropy bonus added to its `advantages` argument
    (`ActorPPOTrainer` only calls its `actor_loss_fn`)."""

    def __init__(self, policy_loss, settings: EntropyAdvantage, capture: EntropyCapture):
        self.policy_loss, self.settings, self.capture = policy_loss, settings, capture

    def __call__(self, log_probs, old_log_probs, advantages, *args, **kwargs):
        entropy = self.capture.pop()
        # entropy[:, j] is the entropy at position j (the distribution of token j + 1); the last
        # A columns belong to the A action tokens, as training_step slices it for its entropy loss.
        entropy = entropy[:, -advantages.shape[-1] :]
        if entropy.shape != advantages.shape:
            raise RuntimeError(
                f"{COEF_FLAG}: entropy of shape {tuple(entropy.shape)} does not line up with advantages "
                f"of shape {tuple(advantages.shape)}"
            )
        advantages = advantages + self.settings.bonus(advantages, entropy)
        return self.policy_loss(log_probs, old_log_probs, advantages, *args, **kwargs)


def install(trainer, settings: EntropyAdvantage):
    """Add the bonus to an `ActorPPOTrainer` (OpenRLHF 0.11.2's, as `PolicyModelActor` builds
    it): hook its Actor's forward and wrap its `actor_loss_fn`. Returns the hook handle."""
    if trainer.args.actor.entropy_coef is None:
        raise ValueError(
            f"{COEF_FLAG} needs OpenRLHF's per-token entropy: pass --actor.entropy_coef 0 "
            "(it computes the entropy and adds no entropy loss)"
        )
    capture = EntropyCapture()
    handle = trainer.actor.register_forward_hook(capture, with_kwargs=True)
    trainer.actor_loss_fn = EntropyAdvantageLoss(trainer.actor_loss_fn, settings, capture)
    return handle


class EntropyAdvantageActorMixin:
    """Mixed into OpenRLHF's policy actor: after `init_model_from_pretrained` built the
    trainer, `install` the bonus on it. `entropy_adv` is set by `policy_actor`."""

    entropy_adv: EntropyAdvantage

    def init_model_from_pretrained(self, *args, **kwargs):
        """OpenRLHF's, then the bonus installed on the trainer it built."""
        result = super().init_model_from_pretrained(*args, **kwargs)
        install(self.trainer, self.entropy_adv)
        return result


def policy_actor(base, settings: EntropyAdvantage):
    """A Ray actor class: `base` (a Ray-wrapped policy actor class, OpenRLHF's
    `PolicyModelActor` or MEDS's `MedsPolicyModelActor`) with `EntropyAdvantageActorMixin`.
    The settings are a class attribute, so they travel with the class to the Ray workers."""
    import ray

    cls = type(
        "EntropyAdvantagePolicyActor",
        (EntropyAdvantageActorMixin, base.__ray_metadata__.modified_class),
        {"entropy_adv": settings, "__doc__": f"{base.__ray_metadata__.class_name} with the entropy advantage bonus."},
    )
    return ray.remote(num_gpus=1)(cls)
