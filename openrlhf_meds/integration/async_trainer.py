"""MEDS with `--train.async_enable`: OpenRLHF's PPOTrainerAsync, whose generator produces the
next batch while the trainer trains on the current one.

Semantics. The memory step of a group is the index of the batch it belongs to, counted by the
generator (batch b is trained as step b + 1, as in a sync run), not the trainer's step when the
group happens to finish. Batches are generated one after another, so a group is assigned
against the memory as it is when the group arrives: every group of the earlier batches, exact
per key in arrival order, the same penalties a sync run would give the same rollouts. What
async changes is only the policy: batch b + 1 is sampled while step b + 1 is still training on
batch b, so from weights one step older than in a sync run (OpenRLHF's off-policy lag).
Evaluation rollouts (the generator runs them) stay out of the memory.
"""

from __future__ import annotations

import ray
from openrlhf.trainer import ppo_trainer_async

from .trainer import MedsTrainer


def plain(actor_class):
    """The class behind a Ray actor class. Subclasses of it become actor classes of their own;
    subclasses of Ray's wrapper would keep OpenRLHF's class name and id, and an actor created
    from another actor's process would come back as OpenRLHF's class."""
    return actor_class.__ray_metadata__.modified_class.__ray_actor_class__


@ray.remote
class MedsTrainingActor(MedsTrainer, plain(ppo_trainer_async.TrainingActor)):
    """OpenRLHF's async TrainingActor with the MEDS memory: shaping, metrics, checkpoints."""


@ray.remote
class MedsGenerateSamplesActor(plain(ppo_trainer_async.GenerateSamplesActor)):
    """OpenRLHF's async generator that tells the MEDS engines the memory step of each batch."""

    def meds_start(self, step: int):
        """Number the batches from `step` (the trainer's global step when fit starts): the
        engines tag each batch's groups with its memory step before it is generated."""
        self.meds_step = int(step)
        generate = self.samples_generator.generate_samples

        def generate_samples(**kwargs):
            self._set_engines(True)
            out = generate(**kwargs)
            if out[0]:  # a batch the trainer will train on: the next one is the next step
                self.meds_step += 1
            return out

        if not hasattr(self, "meds_step_set"):
            self.meds_step_set = True
            self.samples_generator.generate_samples = generate_samples

    def _set_engines(self, submit: bool):
        engines = self.samples_generator.vllm_engines or []
        ray.get([e.meds_set_step.remote(self.meds_step, submit) for e in engines])

    def _run_eval(self):
        self._set_engines(False)  # evaluation rollouts stay out of the memory
        try:
            return super()._run_eval()
        finally:
            self._set_engines(True)


@ray.remote
class MedsPPOTrainerAsync(plain(ppo_trainer_async.PPOTrainerAsync)):
    """OpenRLHF's PPOTrainerAsync building the MEDS generator and training actors."""

    def __init__(self, *args, **kwargs):
        # The base __init__ builds its actors from the names GenerateSamplesActor and
        # TrainingActor in its globals. Ray ships this class by value, so those globals are
        # the function's own copy, not the module's: set the MEDS actors there (this process only).
        base_init = super().__init__
        base_init.__func__.__globals__.update(
            GenerateSamplesActor=MedsGenerateSamplesActor, TrainingActor=MedsTrainingActor
        )
        base_init(*args, **kwargs)

    def meds_setup(self, config: dict, memory):
        """MEDS for the training actor; with the vLLM feature source (the engines submit the
        groups), the generator numbers the batches."""
        generator = self.generator_actor if config["feature_source"] == "vllm" else None
        ray.get(self.trainer_actor.meds_setup.remote(config, memory, generator))
