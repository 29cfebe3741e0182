"""MEDS with `--train.async_enable`: OpenRLHF's PPOTrainerAsync, whose generator produces the
next batch while the trainer trains on the current one.

Semantics (vLLM feature source). The memory step of a group is the index of the batch it
belongs to, counted by the generator (batch b is trained as step b + 1, as in a sync run), not
the trainer's step when the group happens to finish; with `--rollout.vllm_generate_batch_size`
a multiple m of `--rollout.batch_size`, the m batches of one generation share the first one's
step. Batches are generated one after another, so a group is assigned against the memory as it
is when it arrives: every group of the earlier batches, exact per key in arrival order, the
penalties a sync run would give the same rollouts. What async changes is the policy: batch
b + 1 is sampled while step b + 1 trains on batch b, from weights one step older than in a sync
run (OpenRLHF's off-policy lag). With the actor feature source the trainer submits the groups
when it trains on them, so the memory is in training order, but the features then come from
weights one step newer than those that sampled the batch. Evaluation rollouts (the generator
runs them) stay out of the memory. The trainer's memory metrics (`meds/memory_vectors`, ...) are
read while the next batch arrives, so they may count part of it.
"""

from __future__ import annotations

import os

import ray
from openrlhf.trainer import ppo_trainer_async

from . import shaped_filter
from .eval_metrics import with_pass_at_k
from .trainer import MedsTrainer, snapshot_dir


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
    """OpenRLHF's async generator that tells the MEDS engines the memory step of each batch
    (vLLM feature source; `meds_start` turns it on) and logs the unbiased pass@k of its evals."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.meds_step = None  # None: engines without MEDS tags (the actor feature source)
        self.meds_memory = None
        generate = self.samples_generator.generate_samples

        def generate_samples(**kwargs):
            self._snapshot_before_batch()
            self._set_engines(True)
            out = generate(**kwargs)
            if out[0] and self.meds_step is not None:  # a batch to train on: the next is the next step
                self.meds_step += 1
            return out

        self.samples_generator.generate_samples = generate_samples
        # _run_eval computes its metrics with the compute_eval_metrics of its globals (OpenRLHF's,
        # imported by value): the same metrics as a sync run's evaluation, pass@k included.
        scope = super()._run_eval.__func__.__globals__
        scope["compute_eval_metrics"] = with_pass_at_k(scope["compute_eval_metrics"])

    def meds_start(self, step: int, memory):
        """Number the batches from `step` (the trainer's global step when fit starts): the
        engines tag each batch's groups with its memory step before it is generated.
        `memory` (None for the baseline): the MemoryClient whose checkpoint snapshots this
        actor takes."""
        self.meds_step, self.meds_memory = int(step), memory

    def meds_shaped_filter(self, memory, filter_range):
        """--meds.filter_metric shaped: this generator's dynamic filtering decides on the
        MEDS-shaped rewards (integration/shaped_filter.py)."""
        shaped_filter.install(self.samples_generator, memory, filter_range)

    def _snapshot_before_batch(self):
        """The memory snapshot of checkpoint s holds the groups of batches 0..s-1 only, as a
        sync run's does: taken here, before batch s is generated (the trainer, still training
        step s, saves its own part of that checkpoint later). A resumed run regenerates batch
        s, so it must not be in the memory already."""
        step = self.meds_step
        if self.meds_memory is None or step == 0 or step % self.args.ckpt.save_steps:
            return
        path = snapshot_dir(self.args.ckpt.path, step)
        if not os.path.isdir(path):  # on resume, the snapshot of the start step exists already
            self.meds_memory.snapshot(path, step=step)

    def _set_engines(self, submit: bool):
        if self.meds_step is not None:
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
        # TrainingActor in the globals it resolves them from (Ray ships the class by value,
        # with a copy of them): set the MEDS actors there, in this actor's process only.
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
