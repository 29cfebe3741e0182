"""The engine's per-step MEDS work: `MedsFeatureProcessor.update_state` + `apply` per decoding step.

In-stream capture runs the MEDS logits processor at every sampling step of every rollout
engine (openrlhf_meds/engine/vllm_features.py). This times it alone, at the batch sizes an
engine runs at full batch (128, 512, 1,024 tagged rows), with a stand-in for the model part
(`StandInModel`: the real `_MedsFeatures` methods on small CPU tensors), so the number is
the processor's Python and array work, not a GPU's. Each row's output list starts with 1-3K
real Qwen-tokenizer ids of MATH500 solutions (LaTeX: many tokens hold "{", a few `\\boxed{`)
and grows by one token per step; a row ends its stream with `\\boxed{answer}`.

    bash scripts/run.sh bench engine_step                  # 128, 512, 1024 rows, 1000 steps each
    bash scripts/run.sh bench engine_step --rows 1024 --steps 300

Each batch first runs `--warmup` untimed steps: every row joins the scan, and the first batch
of candidates becomes logits (the first einsum of a shape picks its kernel once per process).
The mean is then the steady state a long rollout batch runs at.

Prints per batch size the mean and median time per step (update_state + apply), the
candidate rows per step, the same batch with the per-row rule (`brace_candidacy` on every
row's list, one Python call per row and step) for comparison, then the extra activation
bytes per token the feature costs a Qwen2.5-Math-7B engine (the concatenated residual
streams) and the share of the KV cache it displaces. The last line reads
`processor: X ms per step at 1024 rows`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

from openrlhf_meds.engine import vllm_features as vf
from openrlhf_meds.meds.answer import brace_candidacy

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "eval", "benchmarks", "math500.jsonl")


def processor_config(tokenizer_dir: str, max_num_seqs: int = 1024) -> SimpleNamespace:
    """The parts of a VllmConfig the MEDS processor reads (its tokenizer, the batch size)."""
    model = SimpleNamespace(tokenizer=tokenizer_dir, tokenizer_revision=None, trust_remote_code=False)
    return SimpleNamespace(model_config=model, scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs))


class StandInModel:
    """The model side of in-stream capture without vLLM: `meds_rows` (the rows compute_logits
    would keep), a final norm and an lm_head, and the real `_MedsFeatures` methods on them.
    `register(config)` makes a processor built with `config` find it, as the engine does."""

    meds_logits = vf._MedsFeatures.meds_logits
    meds_batch_rows = vf._MedsFeatures.meds_batch_rows
    meds_store = vf._MedsFeatures.meds_store

    def __init__(self, window=14, hidden=64, vocab=151936, device="cpu", dtype=torch.float32, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.window, self.hidden = window, hidden
        self.model = SimpleNamespace(norm=torch.nn.RMSNorm(hidden, eps=1e-6).to(device=device, dtype=dtype))
        weight = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(device=device, dtype=dtype)
        shard = SimpleNamespace(org_vocab_start_index=0, org_vocab_end_index=vocab)
        self.lm_head = SimpleNamespace(weight=weight, shard_indices=shard)
        self.device, self.dtype = device, dtype
        self.meds_rows = None
        self.meds_partials, self.meds_captures = {}, {}

    def register(self, config) -> None:
        vf._MODELS[id(config)] = self

    def set_rows(self, rows: torch.Tensor) -> None:
        """This step's gathered rows, [batch rows, window, H] (compute_logits' view)."""
        self.meds_rows = rows


def responses(tokenizer, count: int = 64, seed: int = 0) -> list[list[int]]:
    """`count` rollout-like responses of 1-3K real Qwen ids: MATH500 solutions (LaTeX, so many
    tokens hold "{") with their inner `\\boxed{}` unwrapped, then one final `\\boxed{answer}`."""
    rng = np.random.default_rng(seed)
    rows = []
    if os.path.exists(DATA):
        with open(DATA) as f:
            rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r.get("solution")] or [
        {"solution": "Let $x = \\frac{a}{b}$, so $x^{2} = 4$.", "answer": "2"}
    ]
    text = "\n\n".join(r["solution"].replace("\\boxed{", "{") for r in rows)
    ids = tokenizer.encode(text, add_special_tokens=False)
    out = []
    for i in range(count):
        n = int(rng.integers(1000, 3001))
        start = int(rng.integers(0, max(1, len(ids) - n)))
        answer = rows[i % len(rows)].get("answer", "2")
        out.append(
            ids[start : start + n]
            + tokenizer.encode(f" The answer is $\\boxed{{{answer}}}$.", add_special_tokens=False)
        )
    return out


class Batch:
    """A persistent batch of `rows` tagged generations, each decoding one of `pool`'s responses
    from a random point, a new request taking a row as soon as its response ends (as vLLM's
    batch does): per step, `update()` is the BatchUpdate (None when no row changed), `sample()`
    appends every running row's next token."""

    def __init__(self, pool: list[list[int]], rows: int, seed: int = 0):
        from vllm.v1.sample.logits_processor import BatchUpdate

        self.rng = np.random.default_rng(seed)
        self.pool, self.count = pool, 0
        self.script = [None] * rows  # row -> the response it decodes
        self.outs: list[list[int]] = [None] * rows
        # The steady state of a running batch: each row somewhere in its response.
        added = [self._request(row, start=None) for row in range(rows)]
        self.pending = BatchUpdate(rows, removed=[], added=added, moved=[])
        self.finished: list[int] = []

    def _request(self, row: int, start: int | None = 0):
        """A new request at `row` with the first `start` ids of a response (None: a random point)."""
        from vllm import SamplingParams

        script = self.pool[int(self.rng.integers(len(self.pool)))]
        if start is None:
            start = int(self.rng.integers(1, len(script)))
        self.script[row], self.outs[row] = script, list(script[:start])
        tag = f"r{self.count}"
        self.count += 1
        return row, SamplingParams(max_tokens=1 << 20, extra_args={vf.CAPTURE_ARG: tag}), [0], self.outs[row]

    def update(self):
        from vllm.v1.sample.logits_processor import BatchUpdate

        if self.finished:  # a new request takes each finished row
            added = [self._request(row) for row in self.finished]
            self.pending = BatchUpdate(len(self.outs), removed=list(self.finished), added=added, moved=[])
            self.finished = []
        update, self.pending = self.pending, None
        return update

    def sample(self):
        for row, (out, script) in enumerate(zip(self.outs, self.script)):
            out.append(script[len(out)])
            if len(out) == len(script):
                self.finished.append(row)


def run_steps(processor, model, batch: Batch, steps: int, hidden: torch.Tensor):
    """`steps` decoding steps of `batch`; returns per step the CPU seconds of
    update_state + apply, their wall seconds, and the candidate rows the processor kept."""
    logits = torch.zeros(len(batch.outs), 1, device=hidden.device)
    model.set_rows(hidden)
    taken = []  # rows of candidates the processor copied, per call
    batch_rows = model.meds_batch_rows
    model.meds_batch_rows = lambda index: taken.append(len(index)) or batch_rows(index)
    cpu, wall, candidates = [], [], []
    for _ in range(steps):
        update = batch.update()
        t0, c0 = time.perf_counter(), time.thread_time()
        processor.update_state(update)
        processor.apply(logits)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
        candidates.append(sum(taken))
        taken.clear()
        batch.sample()
    return cpu, wall, candidates


def per_row_rule(tokenizer, outs: list[list[int]], steps: int) -> list[float]:
    """The per-row rule for comparison: `brace_candidacy` on every row's list, every step."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        for out in outs:
            brace_candidacy(out, tokenizer)
        times.append(time.perf_counter() - t0)
    return times


def activation_costs(window: int) -> list[str]:
    """Extra activation bytes per token of the feature for Qwen2.5-Math-7B (bf16) and the KV
    cache they displace: vLLM sizes its KV cache after a profiling forward of
    max_num_batched_tokens tokens, so every extra activation byte of that forward is a byte
    less of KV cache."""
    hidden, layers, kv_heads, head_dim, params = 3584, 28, 4, 128, 7.62e9
    extra = (window - 1) * hidden * 2  # the concatenated residual streams, bf16
    peak = 2 * extra  # the aux list and its concatenation live together for a moment
    kv = layers * 2 * kv_heads * head_dim * 2  # K and V, bf16
    lines = [
        f"Qwen2.5-Math-7B, window {window}: +{extra:,} B per token in the forward's output "
        f"({window - 1} residual streams x {hidden} x bf16), {peak:,} B at the concatenation's peak; "
        f"a KV-cache token is {kv:,} B"
    ]
    budget = 0.85 * 80e9 - params * 2  # an H100 at gpu_memory_utilization 0.85, less the weights
    for tokens, who in (
        (2048, "OpenRLHF's default (vLLM's fallback)"),
        (4096, "the official run"),
        (16384, "vllm.LLM on an H100"),
    ):
        lost = peak * tokens
        lines.append(
            f"  max_num_batched_tokens {tokens:>6} ({who}): {lost / 2**20:,.0f} MiB of activations = "
            f"{lost / kv:,.0f} KV-cache tokens = {100 * lost / budget:.2f}% of an H100's KV cache at 0.85"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--steps", type=int, default=1000, help="timed steps per batch size")
    p.add_argument("--warmup", type=int, default=300, help="untimed steps first (see the docstring)")
    p.add_argument(
        "--hidden",
        type=int,
        default=64,
        help="stand-in hidden size: small, so that each tensor op of a candidate costs the CPU about what "
        "launching its GPU kernel costs (tens of microseconds at most), not a real 7B row's arithmetic",
    )
    p.add_argument("--device", default="cpu", help="where the stand-in's tensors live")
    args = p.parse_args(argv)
    from openrlhf_meds.demo.toy import build_qwen_tokenizer
    from openrlhf_meds.engine.client import feature_window
    from openrlhf_meds.meds.config import MedsConfig

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_qwen_tokenizer(tmp)
        window = feature_window(MedsConfig(), 28)
        pool = responses(tokenizer)
        brace_candidacy(pool[0], tokenizer)  # build the tokenizer's tables outside the timing
        scan = "engine/_scan.c" if vf._scan is not None else "Python and numpy (the C pass did not build)"
        print(f"the rows' pass: {scan}; tensors on {args.device}")
        print(
            f"{'rows':>6} {'CPU ms/step':>12} {'median':>8} {'wall ms/step':>13} {'joins/step':>11} "
            f"{'candidates/step':>16} {'per-row rule ms/step':>21}"
        )
        last = None
        for rows in args.rows:
            config = processor_config(tmp, max_num_seqs=rows)
            model = StandInModel(window=window, hidden=args.hidden, device=args.device)
            model.register(config)
            processor = vf.MedsFeatureProcessor(config, torch.device(args.device), False)
            batch = Batch(pool, rows, seed=rows)
            hidden = torch.zeros(rows, window, args.hidden, device=args.device)
            gc.collect()
            gc.freeze()  # as vLLM's engine core does once started (freeze_gc_heap)
            run_steps(processor, model, batch, args.warmup, hidden)
            joined = batch.count
            cpu, wall, cands = run_steps(processor, model, batch, args.steps, hidden)
            gc.unfreeze()
            baseline = per_row_rule(tokenizer, batch.outs, 30)
            mean = 1e3 * statistics.fmean(cpu)
            print(
                f"{rows:>6} {mean:>12.4f} {1e3 * statistics.median(cpu):>8.4f} {1e3 * statistics.fmean(wall):>13.4f} "
                f"{(batch.count - joined) / args.steps:>11.2f} {statistics.fmean(cands):>16.2f} "
                f"{1e3 * statistics.fmean(baseline):>21.3f}",
                flush=True,
            )
            last = (rows, mean)
        print()
        for line in activation_costs(window):
            print(line)
        if last is not None:
            print(f"processor: {last[1]:.4f} ms per step at {last[0]} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
