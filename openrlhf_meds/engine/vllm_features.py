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

import operator
import weakref
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch
from openrlhf.trainer.ray.vllm_worker_wrap import WorkerWrap
from torch import nn
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from ..meds.answer import BraceScanner, brace_candidacy
from ..versions import check_vllm_version

EXTRA_ARG = "meds_target"  # SamplingParams.extra_args key of a re-prefill: (tag, y*)
CAPTURE_ARG = "meds_capture"  # SamplingParams.extra_args key of a generation to capture: tag

# This process's MEDS models, by id(vllm_config): the logits processor finds its model here
# (the model runner passes the same VllmConfig object to both).
_MODELS: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()


def shard_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: Sequence[int],
    start: int,
    end: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One tensor-parallel rank's share of the per-layer logits `W_lm[y*] . h_k (+ bias)`.

    `hidden`: [rows, layers, H]; `weight` (and `bias`): this rank's lm_head rows, which hold
    vocabulary ids `start .. end-1` in order; `targets`: the rows' y* ids as Python ints.
    Returns float32 [rows, layers], zero for rows whose y* another rank owns: summing every
    rank's share gives the logits. The lm_head rows are gathered by one `index_select` whose
    index is built in pinned host memory (on CUDA) and copied without blocking: the step never
    waits for the device, and a batch costs a few ops whatever its size.
    """
    own = [start <= int(y) < end for y in targets]
    local = [int(y) - start if o else 0 for y, o in zip(targets, own)]
    everyone = all(own)  # always with one rank: no mask to send
    index = torch.tensor(local if everyone else [local, own], dtype=torch.long, pin_memory=weight.is_cuda)
    index = index.to(weight.device, non_blocking=True)
    rows = index if everyone else index[0]
    logits = torch.einsum("rkh,rh->rk", hidden.float(), weight.index_select(0, rows).float())
    if bias is not None:
        logits = logits + bias.index_select(0, rows).float()[:, None]
    return logits if everyone else logits * index[1, :, None]


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

    def meds_logits(self, hidden: torch.Tensor, y_star: Sequence[int]) -> torch.Tensor:
        """This rank's per-layer logits of `hidden` ([m, window, H] rows) for tokens `y_star`
        (m ints): float32 [m, 2 * window] = `[raw | logit lens]`, each l_{L-w+1} .. l_L (the
        caller picks one; the final layer is the same in both)."""
        aux = hidden[:, :-1]
        normed = self.model.norm(aux.reshape(-1, aux.shape[-1])).view_as(aux) if aux.shape[1] else aux
        hidden = torch.cat([hidden, normed, hidden[:, -1:]], dim=1)  # [m, 2 * window, H]
        shard = self.lm_head.shard_indices
        return shard_logits(
            hidden,
            self.lm_head.weight,
            y_star,
            shard.org_vocab_start_index,
            shard.org_vocab_end_index,
            getattr(self.lm_head, "bias", None),
        )

    def meds_batch_rows(self, index: Sequence[int]) -> torch.Tensor:
        """A copy of the [len(index), window, H] rows of these batch rows from the last
        compute_logits. Integer indexing (views) and one stack: no index tensor is built on
        the host and copied to the device."""
        rows = self.meds_rows
        if rows is None or max(index) >= rows.shape[0]:
            raise RuntimeError(
                f"MEDS features: batch rows {list(index)} but compute_logits saw "
                f"{None if rows is None else rows.shape[0]} rows (vLLM internals changed?)"
            )
        if len(index) == 1:  # the common case: one op, no stack
            return rows[int(index[0]) : int(index[0]) + 1].clone()
        return torch.stack([rows[int(i)] for i in index])

    def meds_store(self, targets: dict[int, tuple[str, int]]) -> None:
        """Keep this rank's per-layer logits of the re-prefill rows in `targets` (row -> (tag,
        y*))."""
        index = sorted(targets)
        logits = self.meds_logits(self.meds_batch_rows(index), [targets[i][1] for i in index])
        for i, row in zip(index, logits):
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
    response is complete (the caller runs `answer_target` and asks for that p). `out` is the
    request's live output token list; `live` whether the request is in the batch."""

    def __init__(self, out: list[int]):
        self.out, self.live, self.left = out, True, 0  # left: how many times it left the batch
        self.latest: dict[str, int | None] = {"exact": None, "fallback": None}
        self.hidden: dict[int, torch.Tensor] = {}  # p -> [window, H], until they become logits
        self.queued: set[int] = set()  # candidates of `hidden` whose y* is known, waiting for logits
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
        self.queued &= keep
        self.queued.discard(p)
        self.logits.pop(p, None)
        self.hidden[p] = hidden

    def known(self) -> list[tuple[int, int]]:
        """(p, y*) of the candidates whose y* is now in the output list, not queued yet to
        become logits; they are queued from now on."""
        out = self.out
        new = [(p, out[p + 1]) for p in self.hidden if p not in self.queued and len(out) > p + 1 and out[p + 1] >= 0]
        self.queued.update(p for p, _ in new)
        return new


def _resolve(model, pending: list[tuple[_Capture, int, int]]) -> None:
    """Candidates (record, p, y*) whose y* is known: their hidden rows become per-layer logits,
    all in one batch. An entry whose p has left the record since (a newer candidate of the same
    rule, or an earlier entry for the same p) is skipped."""
    todo, seen = [], set()
    for record, p, y in pending:
        if p in record.hidden and (id(record), p) not in seen:
            seen.add((id(record), p))
            todo.append((record, p, y))
    for record, p, _ in todo:
        record.queued.discard(p)
    if todo:
        hidden = torch.stack([record.hidden.pop(p) for record, p, _ in todo])
        for (record, p, y), row in zip(todo, model.meds_logits(hidden, [y for _, _, y in todo])):
            record.logits[p] = (y, row)


# Candidates whose y* is known are turned into logits this many at a time: one batch of GPU
# work every 128 candidates instead of one per candidate (their rows wait in the meantime,
# 13 MB at 7B; a pop before then computes its own).
RESOLVE_BATCH = 128


# A batch row's entry in the processor's last-token scan when it has no token to look at
# (untagged, or a tagged request still prefilling): its "last token" is -1, never a brace.
_NO_TOKEN = [-1]
_LAST = operator.itemgetter(-1)


try:
    from . import _scan
except ImportError:  # the C pass did not build: the same in Python and numpy (~2x slower per step)
    _scan = None


def scan_rows(scanner: BraceScanner, rows: list[list[int]], hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`scanner.step` over each row's newest token (`rows[i][-1]`; the processor's rows are
    never empty): `(candidate rows, their flags)`. In one C pass (`engine/_scan.c`) where it
    built, else in Python and numpy; `hits`: int64 scratch of at least 2 x len(rows)."""
    n = len(rows)
    scanner.grow(n)
    if _scan is None:
        return scanner.step(np.fromiter(map(_LAST, rows), dtype=np.int64, count=n))
    k = _scan.scan(rows, scanner.classes, scanner.table, scanner.shift, scanner.state, hits)
    return hits[0 : 2 * k : 2], hits[1 : 2 * k : 2]


class MedsFeatureProcessor(LogitsProcessor):
    """Maps batch rows to feature requests and, once per sampling step, has the model keep
    what they need: a re-prefill's per-layer logits, or a tagged generation's candidate
    rows (in-stream capture). Leaves the logits unchanged.

    A step costs no Python work per row: `scan_rows` reads the newest token of every batch row
    from `slots` (each tagged row's live output list) and advances its `BraceScanner` state in
    one pass, which says which rows end at a brace candidate; only those, candidates waiting
    for their y*, and rows joining the batch reach Python. Everything a
    step needs (tokenizer, tables) is built here, when the engine starts.

    Captures of requests that left the batch (finished, preempted or aborted) stay until the
    caller pops them, the oldest `done_cap` of them at most: a capture nobody collects (an
    aborted generation) is dropped once newer ones push it out, so a worker's memory is
    bounded. A dropped capture that was still wanted is re-prefilled by the client."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        from transformers import AutoTokenizer

        self.model_key, self.model = id(vllm_config), None  # the model, once found in _MODELS (a weakref)
        config = vllm_config.model_config
        self.tokenizer = AutoTokenizer.from_pretrained(
            config.tokenizer, revision=config.tokenizer_revision, trust_remote_code=config.trust_remote_code
        )
        self.scanner = BraceScanner(self.tokenizer)  # row i's state follows slots[i]
        self.hits = np.empty(0, dtype=np.int64)  # scratch of scan_rows
        max_seqs = getattr(getattr(vllm_config, "scheduler_config", None), "max_num_seqs", None) or 256
        self.done_cap = 16 * max_seqs  # captures of requests that left the batch, not yet popped
        self.done: deque[tuple[str, _Capture, int]] = deque()  # (tag, record, its departure number)
        # batch row -> (tag, y*, the request's live output token list): re-prefills
        self.targets: dict[int, tuple[str, int, list[int]]] = {}
        self.tagged: dict[int, tuple[str, _Capture]] = {}  # batch row -> a tagged generation
        self.slots: list[list[int]] = []  # batch row -> its output list once scanned, else _NO_TOKEN
        # tagged rows not scanned yet -> their output length on joining: a new request until its
        # first token, a resumed one (recomputed after preemption) until its next token
        self.joining: dict[int, int] = {}
        self.awaiting: set[_Capture] = set()  # live records with a candidate waiting for its y*
        self.unresolved: list[tuple[_Capture, int, int]] = []  # (record, p, y*) to turn into logits

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        target_of(sampling_params)
        capture_of(sampling_params)

    def is_argmax_invariant(self) -> bool:
        # False: vLLM skips argmax-invariant processors for greedy batches, and every
        # step must be seen whatever the batch's sampling.
        return False

    def _model(self):
        model = self.model() if self.model is not None else None
        if model is None:
            model = _MODELS.get(self.model_key)
            if model is None:
                raise RuntimeError(
                    "MEDS feature requests reached an engine without a MEDS model: build it "
                    "with openrlhf_meds.engine.client.engine_kwargs"
                )
            self.model = weakref.ref(model)
        return model

    def _set_slot(self, row: int, out: list[int]) -> None:
        if row >= len(self.slots):
            self.slots.extend([_NO_TOKEN] * (row + 1 - len(self.slots)))
        self.slots[row] = out

    def _leave(self, row: int) -> None:
        """A tagged request left this row (finished, preempted, aborted or replaced): its
        candidates with a known y* become logits, and its record joins the bounded `done`."""
        tag, record = self.tagged.pop(row)
        self.slots[row] = _NO_TOKEN
        self.joining.pop(row, None)
        self.awaiting.discard(record)
        model = self._model()
        self._to_resolve(model, [(record, p, y) for p, y in record.known()])
        record.live, record.left = False, record.left + 1
        self.done.append((tag, record, record.left))
        while len(self.done) > self.done_cap:
            old_tag, old, left = self.done.popleft()
            # only its latest departure counts: a request resumed after preemption leaves again
            if not old.live and old.left == left and model.meds_captures.get(old_tag) is old:
                del model.meds_captures[old_tag]

    def _to_resolve(self, model, pending: list[tuple[_Capture, int, int]]) -> None:
        self.unresolved += pending
        if len(self.unresolved) >= RESOLVE_BATCH:
            _resolve(model, self.unresolved)
            self.unresolved = []

    def _enter(self, row: int, tag: str, out: list[int]) -> None:
        captures = self._model().meds_captures
        record = captures.get(tag)  # a request resumed after preemption keeps its record
        if record is None:
            record = captures[tag] = _Capture(out)
        record.out, record.live = out, True
        self.tagged[row] = (tag, record)
        self._set_slot(row, _NO_TOKEN)
        self.joining[row] = len(out)
        if record.hidden:
            self.awaiting.add(record)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_target(params, _, output_ids):
            target = target_of(params)
            return None if target is None else (*target, output_ids)

        process_dict_updates(self.targets, batch_update, new_target)
        if not batch_update:
            return
        # vLLM's order: removed, added, moved; an added or moved request may replace a row.
        for row in batch_update.removed:
            if row in self.tagged:
                self._leave(row)
        for row, params, _, output_ids in batch_update.added:
            if row in self.tagged:
                self._leave(row)
            tag = capture_of(params)
            if tag is not None:
                self._enter(row, tag, output_ids)
        for a, b, direction in batch_update.moved:
            if direction != MoveDirectionality.SWAP and b in self.tagged:
                self._leave(b)  # a -> b replaces b's request
            self._swap(a, b)
        # Rows past the batch are empty (vLLM condenses the batch): the scan reads exactly the rows.
        size = batch_update.batch_size
        for row in range(size, len(self.slots)):
            if row in self.tagged:
                self._leave(row)
        del self.slots[size:]
        self.slots.extend([_NO_TOKEN] * (size - len(self.slots)))

    def _swap(self, a: int, b: int) -> None:
        """Exchange rows a and b's state (a move a -> b when b holds nothing)."""
        entries = {row: self.tagged.pop(row) for row in (a, b) if row in self.tagged}
        for src, dst in ((a, b), (b, a)):
            if src in entries:
                self.tagged[dst] = entries[src]
        self.slots.extend([_NO_TOKEN] * (max(a, b) + 1 - len(self.slots)))
        self.slots[a], self.slots[b] = self.slots[b], self.slots[a]
        self.scanner.swap(a, b)
        joining = {row: self.joining.pop(row) for row in (a, b) if row in self.joining}
        self.joining.update({b if row == a else a: n for row, n in joining.items()})

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        # Re-prefills: only rows still sampling their first token (the prefill's last chunk
        # overwrites earlier ones) end at the brace; a step after it would not.
        if self.targets:
            pending = {row: (tag, y) for row, (tag, y, out) in self.targets.items() if not out}
            if pending:
                self._model().meds_store(pending)
        if self.tagged:
            self._capture(self._model(), logits.shape[0])
        return logits

    def _capture(self, model, num_rows: int) -> None:
        """In-stream capture. This step's row of a request is its last token's: when that
        token is a brace candidate, keep the row (its y* is sampled from it right after);
        a candidate whose y* has since appeared becomes per-layer logits. Output lists
        hold -1 for tokens of async scheduling not known yet."""
        fresh = []
        for row, joined_at in list(self.joining.items()) if self.joining else ():
            out = self.tagged[row][1].out
            if len(out) > joined_at:  # its first new token: from now on the scan follows it
                del self.joining[row]
                self.scanner.reset(row, out[-self.scanner.context - 1 : -1])
                self.slots[row] = out
            elif out and out[-1] >= 0:  # resumed, recomputing: each chunk's row until the last one's
                kinds = brace_candidacy(out, self.tokenizer)
                if any(kinds):
                    fresh.append((row, self.tagged[row][1], len(out) - 1, kinds))
        if self.awaiting:
            resolve = []
            for record in list(self.awaiting):
                resolve += [(record, p, y) for p, y in record.known()]
                if len(record.queued) == len(record.hidden):  # nothing left waiting for its y*
                    self.awaiting.discard(record)
            self._to_resolve(model, resolve)
        slots = self.slots if len(self.slots) <= num_rows else self.slots[:num_rows]  # as many, but for a dummy run
        if len(self.hits) < 2 * len(slots):
            self.hits = np.empty(4 * len(slots), dtype=np.int64)
        rows, flags = scan_rows(self.scanner, slots, self.hits)
        if len(rows):
            exact, fallback = BraceScanner.EXACT, BraceScanner.FALLBACK
            for row, kind in zip(rows.tolist(), flags.tolist()):
                record = self.tagged[row][1]
                fresh.append((row, record, len(record.out) - 1, (bool(kind & exact), bool(kind & fallback))))
        if fresh:
            hidden = model.meds_batch_rows([row for row, *_ in fresh])
            for (_, record, p, kinds), candidate_rows in zip(fresh, hidden):
                record.add(p, kinds, candidate_rows)
                self.awaiting.add(record)


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

    def meds_held(self) -> dict[str, bool]:
        """The in-stream captures this rank holds: {tag: whether its request is still in the
        batch} (those that left wait for `meds_pop_captures`, the oldest dropped past the
        processor's `done_cap`)."""
        return {tag: record.live for tag, record in self.model_runner.get_model().meds_captures.items()}

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
            elif p in record.hidden:  # y* not resolved yet (a batch not full) or the final token
                known = record.out[p + 1] if len(record.out) > p + 1 else -1
                if known < 0 or known == y_star:  # -1: the final token, or async's placeholder
                    late.append((tag, record.hidden[p], y_star))
        if late:
            hidden = torch.stack([h for _, h, _ in late])
            logits = model.meds_logits(hidden, [y for _, _, y in late])
            found += [tag for tag, _, _ in late]
            rows += list(logits)
        if not found:
            return found, []
        return found, torch.stack(rows).cpu().tolist()
