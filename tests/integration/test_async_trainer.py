"""Contract with OpenRLHF's async trainer (`openrlhf.trainer.ppo_trainer_async`), on which
`openrlhf_meds.integration.async_trainer` builds; the run itself is tests/cpu/test_async.py."""

import inspect

from openrlhf.trainer import ppo_trainer_async
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator


def test_openrlhf_async_internals_the_meds_trainer_relies_on():
    from openrlhf_meds.integration import async_trainer
    from openrlhf_meds.integration.trainer import MedsTrainer

    init = inspect.getsource(ppo_trainer_async.PPOTrainerAsync.__ray_metadata__.modified_class.__init__)
    # The actors are built from the module's globals, in the PPOTrainerAsync actor's process.
    assert "self.generator_actor = GenerateSamplesActor.remote(" in init
    assert "self.trainer_actor = TrainingActor.remote(" in init
    fit = inspect.getsource(ppo_trainer_async.PPOTrainerAsync.__ray_metadata__.modified_class.fit)
    # The trainer's checkpoint states (where MEDS restores the memory and starts the generator's
    # batch count) come before the generator's first batch.
    assert fit.index("trainer_actor.init_checkpoint_states.remote()") < fit.index("generator_actor.fit.remote(")
    gen = ppo_trainer_async.GenerateSamplesActor.__ray_metadata__.modified_class
    loop = inspect.getsource(gen.fit)
    assert "self.samples_generator.generate_samples(**self.generate_kwargs)" in loop
    assert "rollout_samples, filter_pass_rate, prompts_consumed, is_exhausted" in loop  # batch first
    # Without partial rollouts (refused with the vLLM feature source) a batch is generated, its
    # features included, under the vLLM lock that every weight sync takes too.
    assert loop.index("self.vllm_lock.acquire.remote()") < loop.index("self.samples_generator.generate_samples(")
    trainer = ppo_trainer_async.TrainingActor.__ray_metadata__.modified_class
    assert "self.vllm_lock.acquire.remote()" in inspect.getsource(trainer.broadcast_to_vllm)
    assert "self._run_eval()" in loop and "generate_eval_samples" in inspect.getsource(gen._run_eval)
    assert "self.samples_generator = SamplesGenerator(" in inspect.getsource(gen.__init__)
    assert "self.vllm_engines = vllm_engines" in inspect.getsource(SamplesGenerator.__init__)
    train = inspect.getsource(trainer.fit)
    assert "self.train_step(rollout_samples, global_step)" in train
    assert "self.save_logs_and_checkpoints(global_step, status, client_states)" in train
    # The MEDS actors are actor classes of their own (not OpenRLHF's class under another name).
    for ours, theirs in [
        (async_trainer.MedsTrainingActor, ppo_trainer_async.TrainingActor),
        (async_trainer.MedsGenerateSamplesActor, ppo_trainer_async.GenerateSamplesActor),
        (async_trainer.MedsPPOTrainerAsync, ppo_trainer_async.PPOTrainerAsync),
    ]:
        assert issubclass(
            ours.__ray_metadata__.modified_class, theirs.__ray_metadata__.modified_class.__ray_actor_class__
        )
        assert ours.__ray_metadata__.class_name.startswith("Meds")
    assert issubclass(async_trainer.MedsTrainingActor.__ray_metadata__.modified_class, MedsTrainer)
    assert "meds_setup" in async_trainer.MedsTrainingActor.__ray_metadata__.method_meta.methods
    # --meds.filter_metric shaped: the generator actor wraps its own samples_generator.
    assert "meds_shaped_filter" in async_trainer.MedsGenerateSamplesActor.__ray_metadata__.method_meta.methods
