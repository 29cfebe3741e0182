"""One shard of the MEDS error memory as a Ray actor: RPC, the worker queue, statistics.

Why a service: clustering must not sit on the training step's critical path. A prompt group
is submitted as soon as its rollouts are done (while other prompts are still generating);
its penalties are computed at once from the key's current labels (`ErrorMemory.assign`),
and the touched keys are re-clustered afterwards in the background. `ErrorMemory` re-clusters
a stale key itself before assigning to it again, and assigns a prompt drawn twice in a step
against the memory as it was when the step began, so the results equal the synchronous
`ErrorMemory.step` exactly, whatever the order in which groups arrive.

Inside an actor, one worker thread runs all memory work in priority order: assignments
(FIFO) first, then background re-clustering, so a new group never waits behind clustering
of other keys. The Ray event loop only validates, logs and hands out results.

Fault tolerance: every accepted group is appended to the shard's write-ahead log (`wal.py`)
before the submit returns, and the shard's memory is snapshotted every
`--meds.snapshot_interval` steps (at a step boundary) and with every training checkpoint:
frozen in O(keys) by the worker thread (`ErrorMemory.freeze`), written by a thread of its
own while the shard goes on. A training snapshot is a small file: the last such recovery
snapshot (hard-linked) plus the groups logged since (`save_tail`); it is the recovery base
until the full one started with it is written. A
shard that dies is restarted by Ray (`max_restarts`) and rebuilds itself from its last
snapshot plus a replay of the log, so the penalties are the same as if it had never died;
calls in flight are retried by Ray. If the log cannot be read (e.g. the shard was restarted
on another node), the loss is reported and counted (`lost_groups`) and those groups get zero
penalties. `MemoryClient` (`client.py`) starts the shards and routes calls to them.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence

import numpy as np
import ray

from ..meds.config import MedsConfig
from ..meds.memory import ErrorMemory
from ..meds.memory_files import save_tail
from .routing import shard_of, shard_of_group
from .wal import ShardLog, group_record, link_chain, memory_chain, unpack_group

logger = logging.getLogger(__name__)
# Timings each shard keeps per stats() window (sum, count, maximum); the client adds their means.
TIMINGS = ("assign_latency_ms", "assign_ms", "recluster_ms", "base_write_ms")

# Priorities of the worker thread's jobs (lower runs first; FIFO within a priority).
ASSIGN, RECLUSTER = 0, 1
# Results nobody fetched (e.g. groups the trainer filtered out) are dropped after this many steps.
RESULT_TTL_STEPS = 4
# A training snapshot whose base would be a chain of more files than this saves the whole memory.
MAX_CHAIN = 8
# Failure counters kept across stats() windows and restarts.
CUMULATIVE = ("lost_groups", "failed_groups", "restarts", "replayed_groups")


def _digest(prompt_key, step, feats: np.ndarray, ok: np.ndarray, answers: list | None = None) -> str:
    h = hashlib.blake2b(f"{type(prompt_key).__name__}:{prompt_key}|{step}".encode(), digest_size=16)
    h.update(feats.tobytes())
    h.update(ok.tobytes())
    if answers is not None:  # a retry must carry the same answers too
        h.update(json.dumps(answers).encode())
    return h.hexdigest()


class MemoryActor:
    """One shard of the error memory (run as a Ray actor by `MemoryClient.start`)."""

    def __init__(self, config: dict, shard: int, num_shards: int, state_dir: str):
        self.config = MedsConfig(**config)
        self.shard, self.num_shards = shard, num_shards
        self.log = ShardLog(os.path.join(state_dir, f"shard-{shard:05d}"))
        self.memory = ErrorMemory(self.config)
        self.lock = threading.Lock()  # guards results / waiters / digests / the log
        self.results: dict[int, tuple] = {}  # ready, not yet fetched: (sizes, pens, step)
        self.waiters: dict[int, asyncio.Future] = {}
        self.digests: dict[int, str] = {}  # submitted, not yet fetched (for retried submits)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.jobs: queue.PriorityQueue = queue.PriorityQueue()
        self.job_seq = itertools.count()
        self.busy = 0  # queued or running jobs
        self.idle = threading.Condition(self.lock)
        self.latest_step = -1
        self.base_step: int | None = -1  # step of the last recovery snapshot (-1: none; None: count from the next step)
        self.committed: tuple[str | None, int] = (None, -1)  # recovery base: memory file (None: empty), seq
        self.saving = False  # a recovery snapshot is being written
        self.generation = 0  # restores so far: a write of the memory before one must not become the base
        self.lost = False
        self.stat: dict[str, float] = {}
        self._reset_window()
        if ray.get_runtime_context().was_current_actor_reconstructed:
            self._recover()
        else:
            self.log.clear()
        self.log.open()
        threading.Thread(target=self._work, daemon=True, name=f"meds-memory-{shard}").start()

    # ------------------------------------------------------------------ client API

    def node(self) -> dict:
        """Where this shard runs: {"shard", "node_id", "ip", "pid"}."""
        node_id, ip = ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
        return {"shard": self.shard, "node_id": node_id, "ip": ip, "pid": os.getpid()}

    async def submit(self, group_id: int, prompt_key, step: int, features, correct, answers=None) -> int:
        """Accept one prompt group: per-rollout features (NaN rows for missing), verifier
        correctness and, optionally, final answers (str or None per rollout), stored with the
        features. Returns once it is logged; its penalties are computed right after."""
        self.loop = asyncio.get_running_loop()
        group_id = int(group_id)
        if group_id < 0 or shard_of_group(group_id) != self.shard:
            raise ValueError(
                f"group id {group_id} does not belong to memory shard {self.shard} "
                f"(make ids with new_group_id(prompt_key, {self.num_shards}))"
            )
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        feats = np.asarray(features, np.float32)
        if feats.ndim != 2 or len(feats) == 0:
            raise ValueError(f"features must be [n, d] with n >= 1 rollouts, got shape {feats.shape}")
        _, feats, ok, answers = self.memory.check([prompt_key] * len(feats), feats, correct, answers)
        if shard_of(prompt_key, self.num_shards) != self.shard:
            raise ValueError(f"prompt key {prompt_key!r} belongs to shard {shard_of(prompt_key, self.num_shards)}")
        digest = _digest(prompt_key, int(step), feats, ok, answers)
        with self.lock:
            if group_id in self.digests or group_id in self.results:
                if self.digests.get(group_id) == digest:
                    return group_id  # the same group again: a call retried after a restart
                raise ValueError(f"duplicate submit: group id {group_id} was already submitted with other data")
            if int(step) > self.latest_step:
                self._at_new_step(int(step))
            self.latest_step = max(self.latest_step, int(step))
            record = group_record(group_id, prompt_key, int(step), feats, ok, answers)
            self.log.append(record)
            self.digests[group_id] = digest
            self._put(ASSIGN, self._assign, record, time.perf_counter())
        return group_id

    async def fetch(self, group_ids: Sequence[int], timeout: float | None = None):
        """(cluster sizes, penalties) of each group, in order; waits for groups still queued.
        None for a group lost in a crash that could not be replayed (counted)."""
        self.loop = asyncio.get_running_loop()
        out, waits = [], []
        with self.lock:
            for gid in map(int, group_ids):
                if gid not in self.results and gid not in self.digests:
                    if not self.lost:
                        raise KeyError(
                            f"unknown MEDS group id {gid} on memory shard {self.shard}: "
                            f"never submitted, or already fetched"
                        )
                    self.stat["lost_groups"] += 1
                elif gid not in self.results:
                    waits.append(self.waiters.setdefault(gid, self.loop.create_future()))
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"MEDS memory shard {self.shard}: penalties not ready after {timeout} s") from None
        with self.lock:
            for gid in map(int, group_ids):
                result = self.results.pop(gid, None)
                out.append(result and result[:2])
                self.digests.pop(gid, None)
                self.waiters.pop(gid, None)
            self.log.append(("F", [int(g) for g in group_ids]))
        return out

    async def flush(self):
        """Wait until all queued work (assignments, re-clustering) is done and no recovery
        snapshot is being written."""
        await asyncio.get_running_loop().run_in_executor(None, self._wait_idle)

    async def stats(self, reset: bool = True) -> dict:
        """Memory shape, counters and latencies since the last `stats(reset=True)`."""
        queued = self.busy
        out = await self._run_job(lambda _: self.memory.stats())  # the worker owns the memory
        with self.lock:
            out.update(self.stat)
            if reset:
                self._reset_window()
        out.update(queue_depth=queued, shard=self.shard)
        return out

    async def snapshot(self, path: str) -> dict:
        """Save this shard's memory to `path` (atomic): a tail file of the groups logged since
        the recovery base, which is hard-linked beside it. The tail becomes the recovery base,
        and a full one is started in the background."""
        return await self._run_job(self._snapshot_job, path)

    async def restore(self, paths: Sequence[str]):
        """Replace the memory with the keys of this shard found in `paths` (the snapshot
        files of all shards of a snapshot, in shard order; any shard count)."""
        return await self._run_job(self._restore_job, list(paths))

    # ------------------------------------------------------------------ worker thread

    def _put(self, priority: int, fn, *args):
        self.busy += 1
        self.jobs.put((priority, next(self.job_seq), fn, args))

    def _work(self):
        while True:
            _, _, fn, args = self.jobs.get()
            try:
                fn(*args)
            except Exception:  # reported to the waiting caller where there is one
                logger.exception("MEDS memory shard %d: background job failed", self.shard)
            with self.lock:
                self.busy -= 1
                if self.busy == 0:
                    self.idle.notify_all()

    def _wait_idle(self):
        with self.lock:
            self.idle.wait_for(lambda: self.busy == 0 and not self.saving)

    async def _run_job(self, fn, *args):
        """Run `fn(seq, *args)` on the worker thread after the assignments queued before it
        (`seq`: the last log record they cover); return its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def job(seq):
            try:
                result = fn(seq, *args)
            except Exception as e:
                loop.call_soon_threadsafe(fut.set_exception, e)
            else:
                loop.call_soon_threadsafe(fut.set_result, result)

        with self.lock:
            self._put(ASSIGN, job, self.log.seq)
        return await fut

    def _assign(self, record, submitted_at: float | None = None):
        gid, key, step, feats, ok, answers = unpack_group(record)
        t0 = time.perf_counter()
        try:
            sizes, pens, touched = self.memory.assign([key] * len(feats), feats, ok, step=step, answers=answers)
        except Exception:
            logger.exception("MEDS memory shard %d: group %d failed; it gets zero penalties", self.shard, gid)
            sizes, pens, touched = np.zeros(len(feats), np.int64), np.zeros(len(feats)), []
            self.stat["failed_groups"] += 1
        done = time.perf_counter()
        with self.lock:
            self.results[gid] = (sizes, pens, step)
            waiter = self.waiters.get(gid)
            if submitted_at is not None:
                self._time("assign_latency_ms", (done - submitted_at) * 1e3)
            self._time("assign_ms", (done - t0) * 1e3)
            self.stat["penalty_sum"] += float(pens.sum())
            self.stat["groups"] += 1
            if touched:
                self._put(RECLUSTER, self._recluster, touched)
        if waiter is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))

    def _recluster(self, keys):
        t0 = time.perf_counter()
        n = self.memory.recluster(keys)
        with self.lock:
            if n:
                self._time("recluster_ms", (time.perf_counter() - t0) * 1e3)

    def _time(self, name: str, ms: float):
        self.stat[f"{name}_sum"] += ms
        self.stat[f"{name}_n"] += 1
        self.stat[f"{name}_max"] = max(self.stat[f"{name}_max"], ms)

    def _reset_window(self):
        keep = {k: self.stat.get(k, 0) for k in CUMULATIVE}
        self.stat = {name: 0.0 for base in TIMINGS for name in (f"{base}_sum", f"{base}_n", f"{base}_max")}
        self.stat.update(penalty_sum=0.0, groups=0, expired_results=0, **keep)

    # ------------------------------------------------------------------ snapshots, log, recovery

    def _at_new_step(self, step: int):
        """Called (under the lock) when the first group of a new step arrives: everything
        logged so far belongs to earlier steps, so a snapshot now is a step boundary."""
        stale = [g for g, r in self.results.items() if r[2] < step - RESULT_TTL_STEPS]
        for gid in stale:
            del self.results[gid]
            self.digests.pop(gid, None)
        self.stat["expired_results"] += len(stale)
        interval = self.config.snapshot_interval
        if self.base_step is None:
            self.base_step = step  # the first step after a restore: intervals count from here
        elif interval and step - max(self.base_step, 0) >= interval and not self.saving:
            self.base_step = step
            self._put(ASSIGN, self._start_base, self.log.seq)

    def _start_base(self, seq: int):
        """Freeze the memory as of log record `seq` (the worker thread: the assignments of
        the records up to `seq` are done, none after) and write it as the next recovery base
        in a thread of its own; a write already under way makes this a no-op."""
        with self.lock:
            if self.saving:
                return
            self.saving = True
            unfetched, step = dict(self.results), self.latest_step
            stat = {k: self.stat[k] for k in CUMULATIVE}
            self.log.rotate()  # the closed segments end up covered by this snapshot
        frozen = self.memory.freeze()
        args = (frozen, seq, self.generation, step, unfetched, stat)
        threading.Thread(target=self._write_base, args=args, daemon=True, name="meds-memory-save").start()

    def _write_base(self, frozen, seq: int, generation: int, step: int, unfetched: dict, stat: dict):
        t0 = time.perf_counter()
        try:
            path = self.log.save_memory(frozen, seq)
            with self.lock:
                # Not if the base is newer (a training snapshot's tail replaces an older one
                # at its seq) or a restore replaced the memory meanwhile.
                newer = seq >= self.committed[1] and generation == self.generation
                if newer:
                    self.log.commit_base(path, seq, step, unfetched, stat)
                    self.committed = (os.path.basename(path), seq)
            if not newer:
                os.unlink(path)
        except Exception:  # the previous recovery base and the log stay in charge
            logger.exception("MEDS memory shard %d: writing the recovery snapshot failed", self.shard)
        with self.lock:
            self._time("base_write_ms", (time.perf_counter() - t0) * 1e3)
            self.saving = False
            self.idle.notify_all()

    def _commit_now(self, name: str, seq: int):
        """Make the memory file `name` (in the shard's directory) the recovery base as of log
        record `seq`, at once (the worker thread)."""
        with self.lock:
            self.log.rotate()
            stat = {k: self.stat[k] for k in CUMULATIVE}
            self.log.commit_base(os.path.join(self.log.dir, name), seq, self.latest_step, dict(self.results), stat)
            self.committed = (name, seq)

    def _snapshot_job(self, seq: int, path: str) -> dict:
        vectors = int(sum(len(m.data) for m in self.memory.keys.values()))
        with self.lock:  # the base and the segments stay put while they are linked and read
            name, base_seq = self.committed
            # The log no longer describes the memory, or full recovery snapshots keep failing
            # (each snapshot a tail on the last): save all of it.
            full = self.lost or (name is not None and len(memory_chain(os.path.join(self.log.dir, name))) > MAX_CHAIN)
            if not full:
                if name is not None:
                    link_chain(os.path.join(self.log.dir, name), os.path.dirname(os.path.abspath(path)))
                records = [r for _, r in self.log.read(max(base_seq, 0), seq) if r[0] == "G"]
        if full:
            self.memory.save(path)
        else:
            save_tail(path, name, [unpack_group(r)[1:] for r in records], self.config)
        # The snapshot doubles as the recovery base (a link; its base is already here), and a
        # full one is written in the background so that the next tail and a replay stay short.
        own = f"snapshot-{seq:012d}-{os.urandom(4).hex()}.npz"
        link_chain(path, self.log.dir, own)
        self._commit_now(own, seq)
        self.base_step = self.latest_step
        self._start_base(seq)
        return {"path": path, "vectors": vectors}

    def _restore_job(self, seq: int, paths: list[str]):
        own = paths[self.shard] if len(paths) == self.num_shards else None
        memory = ErrorMemory.load(own, self.config) if own else None
        if memory is None or any(shard_of(k[0], self.num_shards) != self.shard for k in memory.keys):
            memory, own = ErrorMemory(self.config), None  # another shard count: re-route every key
            for i, path in enumerate(paths):
                memory.absorb(
                    ErrorMemory.load(path, self.config),
                    keep=lambda key: shard_of(key, self.num_shards) == self.shard,
                    counters=i % self.num_shards == self.shard,  # each old shard's counters counted once
                )
        self.memory = memory
        self.generation += 1
        # The restored memory is the recovery base at once: its file linked (same shard
        # count), else saved.
        name = f"restored-{seq:012d}-{os.urandom(4).hex()}.npz"
        if own:
            link_chain(own, self.log.dir, name)
        else:
            memory.save(os.path.join(self.log.dir, name))
        self._commit_now(name, seq)
        self.base_step = None
        with self.lock:  # label the restored keys in the background, not at their next use
            self._put(RECLUSTER, self._recluster, memory.pending())

    def _recover(self):
        """Rebuild after a restart: last snapshot + replay of the log since."""
        t0, replayed = time.perf_counter(), 0
        try:
            base = self.log.load_base(self.config)
            self.committed = (base.name, base.seq)
            self.log.clear_temporary()
            self.log.collect(None if base.name is None else os.path.join(self.log.dir, base.name))
            if base.memory is not None:
                self.memory = base.memory
            self.results = base.results
            self.digests = dict.fromkeys(self.results, "")
            self.latest_step = self.base_step = base.step
            self.stat.update(base.stat)
            for _, record in self.log.replay(after=base.seq):
                if record[0] == "G":
                    gid, key, step, feats, ok, answers = unpack_group(record)
                    self.digests[gid] = _digest(key, step, feats, ok, answers)
                    self.latest_step = max(self.latest_step, step)
                    self._assign(record)
                    replayed += 1
                else:
                    for gid in record[1]:
                        self.results.pop(gid, None)
                        self.digests.pop(gid, None)
        except Exception as e:
            self.lost = True
            self.log.skip_lost()
            logger.error(
                "MEDS memory shard %d restarted but could not fully recover (%s): groups not "
                "replayed get zero penalties and are counted in lost_groups",
                self.shard,
                e,
            )
        # Re-clustering happens lazily at the next assignment of each key.
        self.jobs, self.busy = queue.PriorityQueue(), 0
        self.stat["restarts"] += 1
        self.stat["replayed_groups"] += replayed
        logger.warning(
            "MEDS memory shard %d restarted: snapshot of step %d + %d groups replayed in %.2f s",
            self.shard,
            self.base_step,
            replayed,
            time.perf_counter() - t0,
        )
