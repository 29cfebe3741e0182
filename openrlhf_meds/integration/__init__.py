"""MEDS inside OpenRLHF 0.11.2, one module per job:

- `openrlhf`: every replaced name, the flag checks, the runner;
- `trainer`: the experience maker's shaping, the trainer's metrics and memory checkpoints;
- `async_trainer`: the same for `--train.async_enable` (the generator and training actors);
- `rollout_actor`: engines at full batch, and engines that emit features and feed the memory;
- `actor_features`: the feature source in the policy's log-prob forward;
- `shaped_filter`: the dynamic filter on the MEDS-shaped reward (`--meds.filter_metric shaped`);
- `entropy_advantage`: the entropy advantage bonus (`--entropy_adv.*`);
- `eval_metrics`: unbiased pass@k and mean@n in OpenRLHF's evaluation;
- `nodes`: the check that every engine node has openrlhf_meds and its vLLM plugin.
"""
