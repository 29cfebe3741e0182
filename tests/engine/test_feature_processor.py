"""The MEDS logits processor's step driven by hand, no engine: what it captures while vLLM's
persistent batch churns (requests joining mid-prefill, finishing, preempted and resumed,
rows moved and swapped), that a step moves no host data to the device, and that captures
nobody collects are bounded. The model side is benchmarks/engine_step.py's `StandInModel`
(the real `_MedsFeatures` methods on small tensors)."""

import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from openrlhf_meds.engine import vllm_features as vf
from openrlhf_meds.meds.answer import answer_target

WINDOW, HIDDEN = 3, 4
BOXED = [59, 79075, 90]  # Qwen: "\\", "boxed", "{"
# Tokens that make the brace rules interact: \ boxed { ' boxed' B oxed {{ }{ ' {' x +
ALPHABET = [59, 79075, 90, 73664, 1611, 291, 2979, 15170, 314, 87, 10]


def stand_in(engine_step, config, device="cpu"):
    """A stand-in model whose lm_head makes a raw per-layer logit equal the hidden value
    (weights 1/H, hidden rows constant), so a captured feature names the step and row its
    hidden rows came from."""
    model = engine_step.StandInModel(window=WINDOW, hidden=HIDDEN, vocab=152000, device=device)
    model.lm_head.weight.fill_(1.0 / HIDDEN)
    model.register(config)
    return model


def scripts(rng, count):
    """Responses of 8-40 tokens over ALPHABET, `\\boxed{` spelled out in most; some end right
    after `\\boxed{` + one token (y* is the final token) or with the brace itself."""
    out = []
    for i in range(count):
        ids = rng.choice(ALPHABET, size=int(rng.integers(8, 40))).tolist()
        if i % 4 != 3:
            at = int(rng.integers(0, len(ids)))
            ids[at:at] = BOXED
        if i % 9 == 0:
            ids += BOXED + [int(rng.choice(ALPHABET))]
        out.append(ids)
    return out


class Churn:
    """vLLM's persistent batch, by hand: up to `rows` requests; a new request prefills for 0-3
    steps before its first token; some are preempted (removed, resumed later with their list,
    recomputing for 1-3 steps); removed rows are filled by added requests, then the batch is
    condensed (last rows moved into holes); now and then two rows are swapped. Updates follow
    vLLM's order: removed, added, moved. `history[tag]` lists (step, row, len(out)) at every
    apply, to know which rows a feature must come from."""

    def __init__(self, responses, rows, seed):
        self.rng = np.random.default_rng(seed)
        self.todo = [(f"t{i}", s) for i, s in enumerate(responses)]
        self.rows: list[dict] = []
        self.preempted, self.finished, self.history = [], [], {}
        self.done: dict[str, list[int]] = {}
        self.size = rows

    def _params(self, tag):
        return SamplingParams(max_tokens=1 << 20, extra_args={vf.CAPTURE_ARG: tag})

    def update(self) -> BatchUpdate | None:
        removed = [i for i, r in enumerate(self.rows) if r["state"] == "done"]
        for i, r in enumerate(self.rows):
            if r["state"] == "decode" and i not in removed and self.rng.random() < 0.03:
                removed.append(i)
                self.preempted.append(r)
        for i in removed:
            if self.rows[i]["state"] == "done":
                self.done[self.rows[i]["tag"]] = self.rows[i]["out"]
        holes = sorted(removed)
        kept = {i: r for i, r in enumerate(self.rows) if i not in removed}
        incoming = []
        while len(kept) + len(incoming) < self.size and (self.todo or self.preempted):
            if self.preempted and (self.rng.random() < 0.5 or not self.todo):
                r = self.preempted.pop(0)
                r["state"], r["wait"] = "recompute", int(self.rng.integers(1, 4))
            else:
                tag, script = self.todo.pop(0)
                r = {
                    "tag": tag,
                    "script": script,
                    "out": [],
                    "state": "recompute",
                    "wait": int(self.rng.integers(0, 4)),
                }
            incoming.append(r)
        added = []
        slots = dict(kept)
        for r in incoming:  # holes first, then the end
            i = holes.pop(0) if holes else max([*slots, len(self.rows) - 1]) + 1
            slots[i] = r
            added.append((i, self._params(r["tag"]), [0], r["out"]))
        moved = []
        while slots and len(slots) < max(slots) + 1:  # condense: the last row moves into the first hole
            hole, last = min(set(range(max(slots))) - set(slots)), max(slots)
            slots[hole] = slots.pop(last)
            moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
        if len(slots) > 1 and self.rng.random() < 0.2:
            a, b = (int(x) for x in self.rng.choice(len(slots), size=2, replace=False))
            slots[a], slots[b] = slots[b], slots[a]
            moved.append((a, b, MoveDirectionality.SWAP))
        assert sorted(slots) == list(range(len(slots)))
        changed = removed or added or moved
        self.rows = [slots[i] for i in range(len(slots))]
        return BatchUpdate(len(self.rows), removed=removed, added=added, moved=moved) if changed else None

    def record(self, step):
        for i, r in enumerate(self.rows):
            self.history.setdefault(r["tag"], []).append((step, i, len(r["out"])))

    def sample(self):
        for r in self.rows:
            if r["state"] == "recompute":
                r["wait"] -= 1
                if r["wait"] >= 0:
                    continue
                r["state"] = "decode"
            if r["state"] == "decode":
                r["out"].append(r["script"][len(r["out"])])
                if len(r["out"]) == len(r["script"]):
                    r["state"] = "done"

    def idle(self):
        return not (self.todo or self.preempted or self.rows)


def run_churn(processor, model, churn, device="cpu", max_steps=3000):
    """Drive the processor through `churn` until every request finished; each step's rows are
    filled with step * 1000 + row."""
    step = 0
    while not churn.idle():
        assert step < max_steps
        processor.update_state(churn.update())
        if churn.rows:
            values = torch.tensor([step * 1000.0 + i for i in range(len(churn.rows))])
            model.set_rows(values[:, None, None].expand(-1, WINDOW, HIDDEN).to(device))
            churn.record(step)
            processor.apply(torch.zeros(len(churn.rows), 1, device=device))
        churn.sample()
        step += 1


def pop(model, tags, wanted):
    worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: model))
    return vf.MedsWorkerWrap.meds_pop_captures(worker, tags, wanted)


def test_c_scan_equals_the_brace_scanner(qwen_tokenizer):
    """engine/_scan.c (built by `pip install -e .`) advances the rows' states and finds the
    candidate rows as `BraceScanner.step` does on their newest tokens, step after step, with
    rows that have no token (-1), ids past the vocabulary and odd rows."""
    from openrlhf_meds.engine import _scan
    from openrlhf_meds.meds.answer import BraceScanner

    assert vf._scan is _scan  # the install built it: engines use it
    rng = np.random.default_rng(0)
    streams = rng.choice(ALPHABET + [151900, 200000, -1], size=(300, 40))
    streams[::3, 5:8] = BOXED
    c, py = BraceScanner(qwen_tokenizer), BraceScanner(qwen_tokenizer)
    hits = np.zeros(600, np.int64)
    found = 0
    for t in range(40):
        rows = [s[: t + 1].tolist() for s in streams]
        got_rows, got_flags = vf.scan_rows(c, rows, hits)
        want_rows, want_flags = py.step(streams[:, t])
        assert got_rows.tolist() == want_rows.tolist() and got_flags.tolist() == want_flags.tolist()
        assert (c.state == py.state).all()
        found += len(got_rows)
    assert found > 100
    k = _scan.scan([[], "x", [2**70]], c.classes, c.table, c.shift, c.state, hits)
    py.step(np.full(3, -1))  # no token in any of them
    assert k == 0 and (c.state == py.state).all()
    with pytest.raises(ValueError, match="too short"):
        _scan.scan(rows, c.classes, c.table, c.shift, c.state, np.zeros(3, np.int64))


@pytest.mark.parametrize("seed, read", [(0, "c"), (1, "c"), (2, "python")])
def test_captures_under_batch_churn_come_from_the_brace_rows(
    seed, read, engine_step, processor_config, qwen_tokenizer, monkeypatch
):
    """Every finished response's feature is captured (no re-prefill needed), from the row of
    the last step at which the response ended at its `answer_target` brace, with any batch
    churn; popping leaves the worker empty. With the C pass over the rows, and with its
    Python fallback."""
    if read == "python":
        monkeypatch.setattr(vf, "_scan", None)
    processor = vf.MedsFeatureProcessor(processor_config, torch.device("cpu"), False)
    processor.done_cap = 10_000  # everything is popped at the end here, not group by group
    model = stand_in(engine_step, processor_config)
    churn = Churn(scripts(np.random.default_rng(seed), 120), rows=8, seed=seed)
    run_churn(processor, model, churn)
    wanted = {tag: list(answer_target(out, qwen_tokenizer) or ()) for tag, out in churn.done.items()}
    wanted = {tag: pt for tag, pt in wanted.items() if pt}
    assert len(churn.done) == 120 and len(wanted) > 60
    assert sum(1 for r in churn.history.values() if any(n == 0 for _, _, n in r)) > 0  # prefills happened
    found, rows = pop(model, list(churn.done), wanted)
    assert sorted(found) == sorted(wanted)  # all captured: none would be re-prefilled
    for tag, row in zip(found, rows):
        p = wanted[tag][0]
        step, batch_row, _ = [h for h in churn.history[tag] if h[2] == p + 1][-1]
        assert row[:WINDOW] == [step * 1000.0 + batch_row] * WINDOW, tag
    assert model.meds_captures == {} and not processor.tagged


class HostToDevice(TorchDispatchMode):
    """Fails on any aten op that moves data between the host and the device (the meta device
    stands in for a GPU: its tensors hold no data, so such a copy is all there is to see):

    - a blocking copy from one to the other (`_to_copy`, `copy_`), e.g. `tensor.to(device)`;
      a non-blocking one is the designed way (from pinned memory, which only a GPU has: the
      GPU-marked test below checks that part);
    - a device op given a host tensor of more than one value (an index tensor built on the
      host); Python numbers are fine: they travel as kernel arguments, without a copy;
    - advanced indexing by a device tensor that no op made: a Python list index, which
      PyTorch turns into a device tensor in C++ with a host-to-device copy the dispatcher
      never sees."""

    def __init__(self):
        super().__init__()
        self.made = weakref.WeakValueDictionary()  # id -> device tensors produced by ops under the guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        places = {t.device.type for t in tensors}
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            into = kwargs.get("device")
            crosses = len(places) > 1 or (into is not None and torch.device(into).type not in places)
            non_blocking = kwargs.get("non_blocking") or args[2:3] == (True,)  # copy_(src, non_blocking)
            if crosses and not non_blocking:
                raise AssertionError(f"host <-> device: a blocking copy in the hot path: {func}")
        elif "meta" in places and any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
            raise AssertionError(f"host <-> device: a host tensor given to {func}")
        if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default):
            indices = [t for t in torch.utils._pytree.tree_leaves(args[1]) if isinstance(t, torch.Tensor)]
            if any(t.device.type == "meta" and self.made.get(id(t)) is not t for t in indices):
                raise AssertionError(f"host <-> device: a list index sent to the device for {func}")
        out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                self.made[id(t)] = t
        return out


def test_a_step_moves_no_host_data_to_the_device(engine_step, processor_config, monkeypatch):
    """The processor's update_state + apply with the model's tensors on a device (meta):
    candidate rows are taken and turned into logits without an index or token tensor built on
    the host and copied over, and nothing is read back."""
    monkeypatch.setattr(vf, "RESOLVE_BATCH", 4)  # logits made in the steps, under the guard
    rows = torch.zeros(4, WINDOW, HIDDEN, device="meta")
    with HostToDevice(), pytest.raises(AssertionError, match="host <-> device"):
        rows[[0, 2]]  # the guard sees a list index ...
    with HostToDevice(), pytest.raises(AssertionError, match="host <-> device"):
        torch.tensor([1, 2]).to("meta")  # ... and a host tensor sent over, blocking
    with HostToDevice():
        torch.tensor([1, 2]).to("meta", non_blocking=True)  # not: the way an index travels
    processor = vf.MedsFeatureProcessor(processor_config, torch.device("meta"), False)
    model = engine_step.StandInModel(window=WINDOW, hidden=HIDDEN, vocab=152000, device="meta")
    model.register(processor_config)
    churn = Churn(scripts(np.random.default_rng(3), 60), rows=8, seed=3)
    calls = []
    batch_rows = model.meds_batch_rows
    model.meds_batch_rows = lambda index: calls.append(len(index)) or batch_rows(index)

    update_state, apply = processor.update_state, processor.apply

    def guarded(method):
        def run(*args):
            with HostToDevice():
                return method(*args)

        return run

    processor.update_state, processor.apply = guarded(update_state), guarded(apply)
    step = 0
    while not churn.idle():
        processor.update_state(churn.update())
        if churn.rows:
            model.set_rows(torch.zeros(len(churn.rows), WINDOW, HIDDEN, device="meta"))
            processor.apply(torch.zeros(len(churn.rows), 1, device="meta"))
        churn.sample()
        step += 1
    assert sum(calls) > 30  # candidates were taken (and their y* resolved) under the guard
    assert any(record.logits for record in model.meds_captures.values())


def test_uncollected_captures_are_bounded_and_a_pop_is_final(engine_step, processor_config):
    """Captures of requests that left the batch without being popped (aborted) are dropped
    oldest first past `done_cap`; a tag popped while its request still runs one more step (async
    scheduling) is not captured again."""
    processor = vf.MedsFeatureProcessor(processor_config, torch.device("cpu"), False)
    model = stand_in(engine_step, processor_config)
    processor.done_cap = 5
    tags = [f"a{i}" for i in range(12)]
    outs = [[10, 10] + BOXED for _ in tags]  # each ends at a brace: a candidate waiting for y*
    added = [
        (i, SamplingParams(max_tokens=99, extra_args={vf.CAPTURE_ARG: t}), [0], o)
        for i, (t, o) in enumerate(zip(tags, outs))
    ]
    processor.update_state(BatchUpdate(12, removed=[], added=added, moved=[]))
    model.set_rows(torch.ones(12, WINDOW, HIDDEN))
    processor.apply(torch.zeros(12, 1))  # the rows join the scan
    for o in outs:
        o.append(87)
    processor.apply(torch.zeros(12, 1))
    assert len(model.meds_captures) == 12
    # The first request's tag is popped while it still runs a step ending at a new brace.
    found, _ = pop(model, ["a0"], {})
    outs[0] += BOXED
    processor.apply(torch.zeros(12, 1))
    assert "a0" not in model.meds_captures
    # All leave the batch, none collected (aborted): only the newest done_cap stay.
    processor.update_state(BatchUpdate(0, removed=list(range(12)), added=[], moved=[]))
    assert sorted(model.meds_captures) == sorted(tags[-5:])
    assert len(processor.done) == 5 and not processor.awaiting


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_step_never_synchronizes(engine_step, processor_config, monkeypatch):
    """On a GPU, the processor's step under torch.cuda.set_sync_debug_mode("error"): no
    synchronizing copy or call while capturing and resolving candidates."""
    monkeypatch.setattr(vf, "RESOLVE_BATCH", 4)
    processor = vf.MedsFeatureProcessor(processor_config, torch.device("cuda"), True)
    model = stand_in(engine_step, processor_config, device="cuda")
    churn = Churn(scripts(np.random.default_rng(4), 60), rows=8, seed=4)
    update_state, apply = processor.update_state, processor.apply

    def strict(method):
        def run(*args):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return method(*args)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return run

    processor.update_state, processor.apply = strict(update_state), strict(apply)
    run_churn(processor, model, churn, device="cuda")
    assert any(record.logits for record in model.meds_captures.values())
