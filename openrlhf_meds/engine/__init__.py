"""Rollout features from vLLM engines: each rollout's MEDS feature computed by the engine
that generated it (docs/vllm-features.md).

- `vllm_features.py`: what runs inside vLLM's worker processes (the
  model subclasses, the logits processor, the worker extension).
- `client.py`: what the caller runs (`engine_kwargs`,
  `rollout_features`, `rollout_features_sync`).

This module stays import-light: vLLM loads `register` (a `vllm.general_plugins` entry point,
see setup.py) in every process it starts, for every model.
"""

# Hugging Face architecture -> the MEDS subclass registered with vLLM under this name.
ARCHITECTURES = {
    "Qwen2ForCausalLM": "MedsQwen2ForCausalLM",
    "Qwen3ForCausalLM": "MedsQwen3ForCausalLM",
    "LlamaForCausalLM": "MedsLlamaForCausalLM",
}


def register() -> None:
    """vLLM general plugin: register the MEDS model subclasses with vLLM's ModelRegistry.

    Lazy ("module:Class") registration imports nothing until an engine actually asks for
    one of these architectures (via `hf_overrides`, see `client.engine_kwargs`), so the
    plugin is harmless for every other model and vLLM version.
    """
    from vllm import ModelRegistry

    for name in ARCHITECTURES.values():
        ModelRegistry.register_model(name, f"openrlhf_meds.engine.vllm_features:{name}")
