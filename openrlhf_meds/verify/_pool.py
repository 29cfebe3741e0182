"""A small pool of math-verify worker processes (`_worker.py`) fed over pipes.

Each comparison has a wall-clock limit; when it runs past it, its worker is killed (SIGKILL)
and replaced. Nothing here uses signals, so it works from any thread: in a Ray actor, under
asyncio.to_thread, in a ThreadPoolExecutor. Workers are started with fork+exec of the
parent's own interpreter (never a bare fork of a threaded process) and die with stdin's EOF.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
STARTUP_TIMEOUT = 120.0  # importing sympy on a loaded machine; not part of any call's limit
START_RETRY_S = 30.0  # after a failed start, fail fast for this long instead of respawning
CHUNK = 32  # pairs sent to a worker in one message (answers stream back one by one)

# Statuses of one comparison besides success (None).
TIMEOUT, CRASH, START = "timeout", "crash", "start"


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


class WorkerStartError(RuntimeError):
    """A worker could not import math-verify or did not come up in STARTUP_TIMEOUT."""


class _Worker:
    def __init__(self):
        env = dict(os.environ)
        # The worker imports math-verify from wherever this process does (Ray runtime envs too).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            # -P (3.11+): the script's folder, this package, stays off the worker's sys.path
            [sys.executable, "-u", *(["-P"] if sys.version_info >= (3, 11) else []), WORKER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self._fd = self.proc.stdout.fileno()
        self._poll = select.poll()  # poll, not select: a Ray process may hold fds above 1024
        self._poll.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self._buf = b""
        self._born = time.monotonic()
        self.ready = False

    def readline(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll.poll(max(1, int(remaining * 1000))):
                raise _Timeout
            try:
                chunk = os.read(self._fd, 1 << 16)
            except OSError:  # closed under us by Pool.close()
                raise _Died from None
            if not chunk:
                raise _Died
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            msg = json.loads(self.readline(self._born + STARTUP_TIMEOUT))
        except (_Timeout, _Died, ValueError) as e:
            raise WorkerStartError(f"math-verify worker did not start ({type(e).__name__.strip('_')})") from None
        if not msg.get("ready"):
            raise WorkerStartError(f"math-verify worker could not import math_verify: {msg.get('error')}")
        self.ready = True

    def send(self, pairs: Sequence[tuple[str, str]]) -> None:
        try:
            self.proc.stdin.write(json.dumps(list(pairs)).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise _Died from None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # already gone, or stuck in the kernel: nothing more to do here
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass


class Pool:
    """Up to `size` workers, started on demand and kept between calls."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._cond = threading.Condition()
        self._start_failed_at = -1e9
        self._start_error = ""
        self.closed = False

    def _acquire(self, block: bool = True) -> _Worker | None:
        with self._cond:
            while True:
                if self.closed:
                    raise WorkerStartError("the verifier pool is shut down")
                if time.monotonic() - self._start_failed_at < START_RETRY_S:
                    raise WorkerStartError(self._start_error)
                if self._idle:
                    # A ready worker first; else the one started longest ago.
                    ready = [i for i, w in enumerate(self._idle) if w.ready]
                    return self._idle.pop(ready[-1] if ready else 0)
                if len(self._all) < self.size:
                    break
                if not block:
                    return None
                self._cond.wait()
            placeholder = object()  # hold the slot while the process starts outside the lock
            self._all.add(placeholder)
        try:
            worker = _Worker()
        except BaseException:
            with self._cond:
                self._all.discard(placeholder)
                self._cond.notify()
            raise
        with self._cond:
            self._all.discard(placeholder)
            self._all.add(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._idle.append(worker)
            self._cond.notify()

    def _discard(self, worker: _Worker, respawn: bool) -> None:
        worker.kill()
        replacement = None
        if respawn and not self.closed:
            try:
                replacement = _Worker()  # starts importing now, while the caller goes on
            except Exception:
                replacement = None
        with self._cond:
            self._all.discard(worker)
            if replacement is not None:
                self._all.add(replacement)
                self._idle.append(replacement)
            self._cond.notify()

    def run(self, pairs: Sequence[tuple[str, str]], timeout: float) -> list[tuple[float, str | None]]:
        """(verdict, status) for each (prediction, label) pair, in order, on one worker at a time."""
        results: list[tuple[float, str | None]] = []
        while len(results) < len(pairs):
            try:
                worker = self._acquire()
            except (WorkerStartError, OSError) as e:
                results.extend([(0.0, START)] * (len(pairs) - len(results)))
                logger.warning("openrlhf_meds.verify: %s", e)
                break
            clean = False
            try:
                worker.wait_ready()
                rest = pairs[len(results) :]
                worker.send(rest)
                for _ in rest:
                    verdict, err = json.loads(worker.readline(time.monotonic() + timeout))
                    results.append((float(verdict), err))
                clean = True
            except _Timeout:
                results.append((0.0, TIMEOUT))
            except (_Died, ValueError, TypeError):  # gone, or wrote something that is not an answer
                results.append((0.0, CRASH))
            except WorkerStartError as e:
                with self._cond:
                    self._start_failed_at, self._start_error = time.monotonic(), str(e)
                results.extend([(0.0, START)] * (len(pairs) - len(results)))
                logger.warning("openrlhf_meds.verify: %s", e)
            finally:
                if clean:
                    self._release(worker)
                else:  # timed out, died or interrupted: its pipe state is unknown
                    self._discard(worker, respawn=worker.ready)
        return results

    def map(self, pairs: Sequence[tuple[str, str]], timeout: float) -> list[tuple[float, str | None]]:
        """As `run`, spread over the pool's workers in chunks of CHUNK pairs."""
        chunks = [pairs[i : i + CHUNK] for i in range(0, len(pairs), CHUNK)]
        if len(chunks) <= 1 or self.size == 1:
            return [r for chunk in chunks for r in self.run(chunk, timeout)]
        with ThreadPoolExecutor(max_workers=min(self.size, len(chunks))) as ex:
            parts = list(ex.map(lambda chunk: self.run(chunk, timeout), chunks))
        return [r for part in parts for r in part]

    def warmup(self) -> int:
        """Start every worker and wait until each has imported math-verify; returns how many are ready."""
        workers = []
        try:
            while (w := self._acquire(block=False)) is not None:
                workers.append(w)
            for w in workers:
                w.wait_ready()
        except (WorkerStartError, OSError) as e:
            logger.warning("openrlhf_meds.verify: %s", e)
        finally:
            for w in workers:
                if w.ready:
                    self._release(w)
                else:
                    self._discard(w, respawn=False)
        return sum(w.ready for w in workers)

    def close(self) -> None:
        """Kill every worker (busy ones too); later calls fail fast as START errors."""
        with self._cond:
            self.closed = True
            workers = [w for w in self._all if isinstance(w, _Worker)]
            self._idle.clear()
            self._cond.notify_all()
        for w in workers:
            w.kill()


def default_size() -> int:
    """OPENRLHF_MEDS_VERIFY_WORKERS, else min(4, usable CPUs)."""
    env = os.environ.get("OPENRLHF_MEDS_VERIFY_WORKERS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


_pool: Pool | None = None
_pool_lock = threading.Lock()


def get_pool() -> Pool:
    """The process's pool, created on first use (a forked child gets its own)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.closed:
            _pool = Pool(default_size())
        return _pool


def shutdown() -> None:
    """Kill the pool's workers; the next call starts a fresh pool."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def _forget_in_child() -> None:
    # The parent's workers and pipes are the parent's: a forked child starts its own pool.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
