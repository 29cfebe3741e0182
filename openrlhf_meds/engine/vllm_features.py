"""MEDS features inside vLLM 0.29 worker processes (docs/vllm-features.md).

A feature is computed by a "re-prefill": after a rollout finishes, the caller
(`openrlhf_meds.engine.client`) submits prompt + response[:p+1] (p = the brace token of
the final `\\boxed{`) with `max_tokens=1` and `extra_args={"meds_target": (tag, y*)}`.
Automatic prefix caching makes the engine recompute only the uncached tail. The last
prompt token is the brace, so the row vLLM samples from is exactly position p.

Why this design, and not another:
- vLLM has no API that returns hidden states, and forward hooks do not run once the model
  is torch.compile'd (and are not replayed by CUDA graphs). The Qwen2/Qwen3/Llama decoders
  already carry EAGLE-3's aux-hidden-state mechanism (`_set_aux_hidden_state_layers`):
  inside the compiled forward they append the residual stream `hidden + residual` after
  the chosen layers. That is a static part of the graph, so it works with torch.compile,
  piecewise and full CUDA graphs and tensor parallelism exactly as EAGLE-3 does.
- The model runner gathers the rows it samples from (`hidden_states[logits_indices]`)
  before `compute_logits`. Our `forward` returns `[h_{L-w+1} | ... | h_{L-1} | h_final]` concatenated
  along the hidden dimension, so the runner gathers the aux rows for us, in step with the
  logits rows; `compute_logits` splits them again, stashes the (few) gathered rows and
  returns the ordinary logits. compute_logits and the sampler run eagerly (outside CUDA
  graphs), so the Python bookkeeping below is safe there.
- Which batch row holds which request, and its y*, is known to the persistent batch only.
  A custom logits processor (vLLM's public V1 extension point) is told about added,
  removed and moved requests with their SamplingParams before every forward; its `apply`
  runs once per sampling step, right after that step's compute_logits (compute_logits
  also runs later for prompt logprobs, which is why the work is done here and not there).
  It never changes the logits.
- Only rows still sampling their first token are stored. With chunked prefill, rows of
  partial chunks are stored too and overwritten by the chunk that ends at the brace; a
  step after it (if a scheduler ever ran one) is ignored.
- Both the raw per-layer logits and the logit-lens ones (final norm on every layer) are
  returned, so one engine serves `--meds.logit_lens` on or off.
- Tensor parallelism: lm_head is split by vocabulary. Every rank sees the full residual
  stream; each dots it with the lm_head rows of the y* it owns (zero otherwise), and the
  caller sums the ranks' partials (`shard_logits`).
- Results wait in the worker, keyed by the caller's tag, until `MedsWorkerWrap.
  meds_pop_features` (collective_rpc) takes them: concurrent callers see only their own.

Consequences (checked or refused at start-up): custom logits processors make vLLM 0.29
use its V1 model runner (V2 does not support them yet) and refuse speculative decoding;
pipeline parallelism and sequence parallelism are refused here. The concatenation costs
`meds_window x hidden` activation values per token in every forward.
"""

from __future__ import annotations

import weakref

import torch
from openrlhf.trainer.ray.vllm_worker_wrap import WorkerWrap
from torch import nn
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

VLLM_SERIES = "0.29."
EXTRA_ARG = "meds_target"  # SamplingParams.extra_args key: (tag, y*)

# This process's MEDS models, by id(vllm_config): the logits processor finds its model here
# (the model runner passes the same VllmConfig object to both).
_MODELS: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()


def check_vllm_version(version: str | None = None) -> None:
    """Raise RuntimeError unless vLLM is 0.29.x (the internals used here are pinned)."""
    if version is None:
        import vllm

        version = vllm.__version__
    if not version.startswith(VLLM_SERIES):
        raise RuntimeError(
            f"openrlhf_meds.engine needs vLLM {VLLM_SERIES}x (it relies on vLLM internals, "
            f"see patches/README.md), but vllm {version} is installed"
        )


def shard_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    start: int,
    end: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One tensor-parallel rank's share of the per-layer logits `W_lm[y*] . h_k (+ bias)`.

    `hidden`: [rows, layers, H]; `weight` (and `bias`): this rank's lm_head rows, which hold
    vocabulary ids `start .. end-1` in order; `targets`: [rows] y* ids. Returns float32
    [rows, layers], zero for rows whose y* another rank owns: summing every rank's share
    gives the logits.
    """
    own = (targets >= start) & (targets < end)
    local = torch.where(own, targets - start, 0)
    logits = torch.einsum("rkh,rh->rk", hidden.float(), weight[local].float())
    if bias is not None:
        logits = logits + bias[local].float()[:, None]
    return torch.where(own[:, None], logits, 0.0)


class _MedsFeatures:
    """Mixin over a vLLM decoder-only ForCausalLM whose inner model has EAGLE-3 aux hidden
    states (see the module docstring). `hf_config.meds_window` (set by
    `client.engine_kwargs` via `hf_overrides`) is how many per-layer logits are kept:
    l_{L-w+1} .. l_L, i.e. the residual stream after layers L-w+1 .. L-1 plus the final
    norm's output."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        check_vllm_version()
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ValueError("MEDS vLLM features do not support pipeline parallelism")
        if vllm_config.compilation_config.pass_config.enable_sp:
            raise ValueError("MEDS vLLM features do not support sequence parallelism (enable_sp)")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        hf_config = vllm_config.model_config.hf_config
        window = getattr(hf_config, "meds_window", None)
        num_layers = hf_config.num_hidden_layers
        if not isinstance(window, int) or not 1 <= window <= num_layers:
            raise ValueError(
                f"{type(self).__name__} needs hf_overrides meds_window in [1, {num_layers}], got "
                f"{window!r}: build the engine with openrlhf_meds.engine.client.engine_kwargs"
            )
        self.meds_layers = tuple(range(num_layers - window + 1, num_layers))
        # Residual stream after these layers, appended inside the (compiled) inner forward.
        self.model._set_aux_hidden_state_layers(self.meds_layers)
        self.meds_rows: torch.Tensor | None = None  # [rows, window, H] of the last compute_logits
        self.meds_partials: dict[str, torch.Tensor] = {}  # tag -> float32 [2 * window]
        _MODELS[id(vllm_config)] = self

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if not self.meds_layers:
            return out
        hidden, aux = out
        return torch.cat([*aux, hidden], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor):
        rows = hidden_states.unflatten(-1, (len(self.meds_layers) + 1, -1))
        self.meds_rows = rows
        return super().compute_logits(rows[:, -1].contiguous())

    def meds_store(self, targets: dict[int, tuple[str, int]]) -> None:
        """Keep this rank's per-layer logits of the batch rows in `targets` (row -> (tag,
        y*)), from the rows the last compute_logits saw: `[raw | logit lens]`, each
        l_{L-w+1} .. l_L (the caller picks one; the final layer is the same in both)."""
        rows, self.meds_rows = self.meds_rows, None
        index = sorted(targets)
        if rows is None or index[-1] >= rows.shape[0]:
            raise RuntimeError(
                f"MEDS features: batch rows {index} but compute_logits saw "
                f"{None if rows is None else rows.shape[0]} rows (vLLM internals changed?)"
            )
        hidden = rows[index]  # [m, window, H]
        aux = hidden[:, :-1]
        normed = self.model.norm(aux.reshape(-1, aux.shape[-1])).view_as(aux) if aux.shape[1] else aux
        hidden = torch.cat([hidden, normed, hidden[:, -1:]], dim=1)  # [m, 2 * window, H]
        shard = self.lm_head.shard_indices
        y = torch.tensor([targets[i][1] for i in index], device=hidden.device)
        logits = shard_logits(
            hidden,
            self.lm_head.weight,
            y,
            shard.org_vocab_start_index,
            shard.org_vocab_end_index,
            getattr(self.lm_head, "bias", None),
        )
        for i, row in zip(index, logits):
            self.meds_partials[targets[i][0]] = row


class MedsQwen2ForCausalLM(_MedsFeatures, Qwen2ForCausalLM):
    pass


class MedsQwen3ForCausalLM(_MedsFeatures, Qwen3ForCausalLM):
    pass


class MedsLlamaForCausalLM(_MedsFeatures, LlamaForCausalLM):
    pass


def target_of(params) -> tuple[str, int] | None:
    """The (tag, y*) a request asks a feature for, from `SamplingParams.extra_args`."""
    value = (params.extra_args or {}).get(EXTRA_ARG)
    if value is None:
        return None
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and value[1] >= 0
    ):
        raise ValueError(f"extra_args[{EXTRA_ARG!r}] must be (tag: str, y_star: int >= 0), got {value!r}")
    if params.max_tokens != 1:
        raise ValueError(f"a MEDS feature request must have max_tokens=1, got {params.max_tokens}")
    return value[0], value[1]


class MedsFeatureProcessor(LogitsProcessor):
    """Maps batch rows to feature requests and, once per sampling step, has the model store
    their per-layer logits. Leaves the logits unchanged."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.model_key = id(vllm_config)
        # batch row -> (tag, y*, the request's live output token list)
        self.targets: dict[int, tuple[str, int, list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        target_of(sampling_params)

    def is_argmax_invariant(self) -> bool:
        # False: vLLM skips argmax-invariant processors for greedy batches, and the
        # re-prefill must be seen whatever the batch's sampling.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_state(params, _, output_ids):
            target = target_of(params)
            return None if target is None else (*target, output_ids)

        process_dict_updates(self.targets, batch_update, new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        # Only rows still sampling their first token: the prefill (its last chunk
        # overwrites earlier ones) ends at the brace; a step after it would not.
        pending = {row: (tag, y) for row, (tag, y, out) in self.targets.items() if not out}
        if pending:
            model = _MODELS.get(self.model_key)
            if model is None:
                raise RuntimeError(
                    "MEDS feature requests reached an engine without a MEDS model: build it "
                    "with openrlhf_meds.engine.client.engine_kwargs"
                )
            model.meds_store(pending)
        return logits


class MedsWorkerWrap(WorkerWrap):
    """OpenRLHF's worker extension (weight sync) plus the MEDS feature drain."""

    def meds_pop_features(self, tags: list[str]):
        """This rank's partial features of `tags` that are ready, removed from the worker:
        `(found_tags, rows)`, rows[i] = the 2 * window float32 values of found_tags[i] as a list of
        floats (collective_rpc results travel as msgpack, which has no numpy type)."""
        partials = self.model_runner.get_model().meds_partials
        found = [tag for tag in tags if tag in partials]
        if not found:
            return found, []
        return found, torch.stack([partials.pop(tag) for tag in found]).cpu().tolist()
