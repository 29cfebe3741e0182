"""MEDS inside OpenRLHF 0.11.2: `openrlhf` (every replaced name, version checks, the runner),
`trainer` (experience maker shaping + trainer metrics and memory checkpoints),
`rollout_actor` (engines that emit features and feed the memory), `actor_features` (the
feature source in the policy's log-prob forward)."""
