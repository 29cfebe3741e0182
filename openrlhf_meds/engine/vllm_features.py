"""MEDS features inside vLLM 0.29 worker processes (docs/vllm-features.md).

In-stream capture: a generation tagged with `extra_args={"meds_capture": tag}`
(`openrlhf_meds.engine.client.capture`) has its feature kept while it generates. At every
step the row vLLM samples from is the request's last token; when that token is a brace
candidate (`meds.answer.brace_candidacy`: the exact `\\boxed{` match or the fallback
rule's), the row's per-layer hidden states are kept until the next token y* is sampled,
then only the per-layer logits of y*. The latest exact and latest fallback candidates are
kept; the caller picks one with `answer_target` on the finished response. No extra request
and no extra forward.

Re-prefill (for responses the engine did not generate with a tag, or edited after it): the
caller submits prompt + response[:p+1] (p = the brace token of the final `\\boxed{`) with
`max_tokens=1` and `extra_args={"meds_target": (tag, y*)}`; prefix caching recomputes only
the uncached tail, and the row vLLM samples from is exactly position p.

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
- Re-prefills: only rows still sampling their first token are stored. With chunked
  prefill, rows of partial chunks are stored too and overwritten by the chunk that ends at
  the brace; a step after it (if a scheduler ever ran one) is ignored.
- Captures: a candidate becomes logits only once the request's output list holds its y*,
  so rows of partial chunks (a request recomputed after preemption: prompt + output again)
  are overwritten by the chunk that ends at the brace. Output lists are the runner's own
  (extended after each step; async scheduling's -1 placeholders are replaced before the
  processors run); a y* that was the request's last token is applied when the caller pops
  the feature with its y*.
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

from ..meds.answer import brace_candidacy

VLLM_SERIES = "0.29."
EXTRA_ARG = "meds_target"  # SamplingParams.extra_args key of a re-prefill: (tag, y*)
CAPTURE_ARG = "meds_capture"  # SamplingParams.extra_args key of a generation to capture: tag

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
        self.meds_captures: dict[str, _Capture] = {}  # tag -> a generation's in-stream candidates
        _MODELS[id(vllm_config)] = self

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if not self.meds_layers:
            return out
        hidden, aux = out
        return torch.cat([*aux, hidden], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor):
        rows = hidden_states.unflatten(-1, (len(self.meds_layers) + 1, -1))
        self.meds_rows = rows  # a view: only the rows a feature needs are ever copied
        return super().compute_logits(rows[:, -1].contiguous())

    def meds_logits(self, hidden: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
        """This rank's per-layer logits of `hidden` ([m, window, H] rows) for tokens `y_star`
        ([m]): float32 [m, 2 * window] = `[raw | logit lens]`, each l_{L-w+1} .. l_L (the
        caller picks one; the final layer is the same in both)."""
        aux = hidden[:, :-1]
        normed = self.model.norm(aux.reshape(-1, aux.shape[-1])).view_as(aux) if aux.shape[1] else aux
        hidden = torch.cat([hidden, normed, hidden[:, -1:]], dim=1)  # [m, 2 * window, H]
        shard = self.lm_head.shard_indices
        return shard_logits(
            hidden,
            self.lm_head.weight,
            y_star.to(hidden.device),
            shard.org_vocab_start_index,
            shard.org_vocab_end_index,
            getattr(self.lm_head, "bias", None),
        )

    def meds_batch_rows(self, index: list[int]) -> torch.Tensor:
        """The [len(index), window, H] rows of these batch rows from the last compute_logits."""
        rows = self.meds_rows
        if rows is None or max(index) >= rows.shape[0]:
            raise RuntimeError(
                f"MEDS features: batch rows {index} but compute_logits saw "
                f"{None if rows is None else rows.shape[0]} rows (vLLM internals changed?)"
            )
        return rows[index]

    def meds_store(self, targets: dict[int, tuple[str, int]]) -> None:
        """Keep this rank's per-layer logits of the re-prefill rows in `targets` (row -> (tag,
        y*))."""
        index = sorted(targets)
        y = torch.tensor([targets[i][1] for i in index])
        for i, row in zip(index, self.meds_logits(self.meds_batch_rows(index), y)):
            self.meds_partials[targets[i][0]] = row


class MedsQwen2ForCausalLM(_MedsFeatures, Qwen2ForCausalLM):
    pass


class MedsQwen3ForCausalLM(_MedsFeatures, Qwen3ForCausalLM):
    pass


class MedsLlamaForCausalLM(_MedsFeatures, LlamaForCausalLM):
    pass


def target_of(params) -> tuple[str, int] | None:
    """The (tag, y*) a re-prefill request asks a feature for, from `SamplingParams.extra_args`."""
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


def capture_of(params) -> str | None:
    """The tag of a generation whose feature is captured in-stream (`extra_args`)."""
    tag = (params.extra_args or {}).get(CAPTURE_ARG)
    if tag is None:
        return None
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"extra_args[{CAPTURE_ARG!r}] must be a non-empty str tag, got {tag!r}")
    if params.n != 1:
        raise ValueError(f"a MEDS capture tag names one generation: n must be 1, got {params.n}")
    if EXTRA_ARG in params.extra_args:
        raise ValueError(f"extra_args cannot hold both {EXTRA_ARG!r} and {CAPTURE_ARG!r}")
    return tag


class _Capture:
    """One tagged generation's candidates for its feature, following `brace_candidacy`:
    the latest exact and the latest fallback brace position p (response index). A candidate
    keeps its per-layer hidden rows [window, H] until the token after it (y*) is sampled,
    then only y* and its per-layer logits. Which candidate counts is decided when the
    response is complete (the caller runs `answer_target` and asks for that p)."""

    def __init__(self):
        self.latest: dict[str, int | None] = {"exact": None, "fallback": None}
        self.hidden: dict[int, torch.Tensor] = {}  # p -> [window, H], y* not sampled yet
        self.logits: dict[int, tuple[int, torch.Tensor]] = {}  # p -> (y*, float32 [2 * window])

    def add(self, p: int, kinds: tuple[bool, bool], hidden: torch.Tensor) -> None:
        """Candidate p (kinds: exact, fallback) with its rows; a later row of the same p
        (chunks of a recomputation after preemption) replaces an earlier one."""
        for rule, on in zip(self.latest, kinds):
            if on:
                self.latest[rule] = p
        keep = set(self.latest.values())
        for table in (self.hidden, self.logits):
            for q in [q for q in table if q not in keep]:
                del table[q]
        self.logits.pop(p, None)
        self.hidden[p] = hidden


class MedsFeatureProcessor(LogitsProcessor):
    """Maps batch rows to feature requests and, once per sampling step, has the model keep
    what they need: a re-prefill's per-layer logits, or a tagged generation's candidate
    rows (in-stream capture). Leaves the logits unchanged."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.model_key = id(vllm_config)
        self.vllm_config = vllm_config
        self.tokenizer = None  # loaded with the first tagged generation (brace rules)
        # batch row -> (tag, y*, the request's live output token list): re-prefills
        self.targets: dict[int, tuple[str, int, list[int]]] = {}
        # batch row -> (tag, the request's live output token list): tagged generations
        self.captures: dict[int, tuple[str, list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        target_of(sampling_params)
        capture_of(sampling_params)

    def is_argmax_invariant(self) -> bool:
        # False: vLLM skips argmax-invariant processors for greedy batches, and every
        # step must be seen whatever the batch's sampling.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_target(params, _, output_ids):
            target = target_of(params)
            return None if target is None else (*target, output_ids)

        def new_capture(params, _, output_ids):
            tag = capture_of(params)
            return None if tag is None else (tag, output_ids)

        process_dict_updates(self.targets, batch_update, new_target)
        process_dict_updates(self.captures, batch_update, new_capture)
        if self.captures and self.tokenizer is None:
            from transformers import AutoTokenizer

            config = self.vllm_config.model_config
            self.tokenizer = AutoTokenizer.from_pretrained(
                config.tokenizer, revision=config.tokenizer_revision, trust_remote_code=config.trust_remote_code
            )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        # Re-prefills: only rows still sampling their first token (the prefill's last chunk
        # overwrites earlier ones) end at the brace; a step after it would not.
        pending = {row: (tag, y) for row, (tag, y, out) in self.targets.items() if not out}
        if pending or self.captures:
            model = _MODELS.get(self.model_key)
            if model is None:
                raise RuntimeError(
                    "MEDS feature requests reached an engine without a MEDS model: build it "
                    "with openrlhf_meds.engine.client.engine_kwargs"
                )
            if pending:
                model.meds_store(pending)
            if self.captures:
                self._capture(model)
        return logits

    def _capture(self, model) -> None:
        """In-stream capture. This step's row of a request is its last token's: when that
        token is a brace candidate, keep the row (its y* is sampled from it right after);
        a candidate whose y* has since appeared becomes per-layer logits. Output lists
        hold -1 for tokens of async scheduling not known yet."""
        resolve, fresh = [], []
        for row, (tag, out) in self.captures.items():
            record = model.meds_captures.get(tag)
            if record is not None:
                resolve += [(record, p, out[p + 1]) for p in record.hidden if len(out) > p + 1 and out[p + 1] >= 0]
            if out and out[-1] >= 0:
                kinds = brace_candidacy(out, self.tokenizer)
                if any(kinds):
                    fresh.append((row, tag, len(out) - 1, kinds))
        if resolve:
            hidden = torch.stack([record.hidden.pop(p) for record, p, _ in resolve])
            logits = model.meds_logits(hidden, torch.tensor([y for _, _, y in resolve]))
            for (record, p, y), row in zip(resolve, logits):
                record.logits[p] = (y, row)
        if fresh:
            hidden = model.meds_batch_rows([row for row, *_ in fresh]).clone()
            for (_, tag, p, kinds), rows in zip(fresh, hidden):
                model.meds_captures.setdefault(tag, _Capture()).add(p, kinds, rows)


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

    def meds_pop_captures(self, tags: list[str], wanted: dict[str, list[int]]):
        """This rank's in-stream partial features: for each `tag -> [p, y*]` in `wanted`
        (the caller's `answer_target` of the finished response), the per-layer logits of
        candidate p if the engine captured it with this y*. Every tag in `tags` is removed
        from the worker. Returns `(found_tags, rows)` as `meds_pop_features`."""
        model = self.model_runner.get_model()
        records = {tag: model.meds_captures.pop(tag, None) for tag in tags}
        found, rows, late = [], [], []
        for tag, (p, y_star) in wanted.items():
            record = records.get(tag)
            if record is None or p not in record.latest.values():
                continue
            if p in record.logits:
                if record.logits[p][0] == y_star:
                    found.append(tag)
                    rows.append(record.logits[p][1])
            elif p in record.hidden:  # y* was the request's last token: never seen in a step
                late.append((tag, record.hidden[p], y_star))
        if late:
            hidden = torch.stack([h for _, h, _ in late])
            logits = model.meds_logits(hidden, torch.tensor([y for _, _, y in late]))
            found += [tag for tag, _, _ in late]
            rows += list(logits)
        if not found:
            return found, []
        return found, torch.stack(rows).cpu().tolist()
