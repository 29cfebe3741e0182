"""A memory shard's state on disk: write-ahead log, recovery snapshot, training snapshots.

No Ray here: the actor (`actor.py`) decides when to log, snapshot and recover; this module
owns the files and their format.

A shard's directory holds:

- `wal-<first seq>.log`: log segments, each a run of records `<u64 little-endian length>
  <pickle of (seq, record)>`; records are numbered 1, 2, ... across segments. A segment is
  closed (rotated) at each recovery snapshot, so segments the snapshot covers can be deleted.
  A group's record is `group_record(...)`; `unpack_group` reads it, and reads the records
  of logs written before groups carried their final answers as groups without answers.
- `base-<seq>-<id>.npz` + `base.json`: the recovery snapshot, the memory as of record `seq`
  (`ErrorMemory.save`; after a restore, the restored snapshot's file, linked) and, in the
  JSON, that seq, the memory file's name, the latest step, the results not fetched yet and
  the cumulative counters. `base.json` is replaced atomically and written after the `.npz`
  it names, so it always names a complete file. A memory file may be a tail
  (`save_tail`): it names its base file, which then lies in the same directory (a training
  snapshot's tail, linked as `snapshot-<seq>-<id>.npz`, or a restored snapshot's file,
  linked as `restored-<seq>-<id>.npz`, until the next full `base-...` file).

A training snapshot (`MemoryClient.snapshot`) is one `.npz` per shard plus `manifest.json`
(format, version, shard count, file names), written last: without it a snapshot is invalid.
A shard's file is usually a tail: the shard's recovery base (hard-linked into the snapshot's
directory under its own name) plus the groups logged since.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pickle
import secrets
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..meds.config import MedsConfig
from ..meds.memory import ErrorMemory
from ..meds.memory_files import memory_file_base

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SNAPSHOT_FORMAT = "openrlhf_meds.memory_snapshot"
SNAPSHOT_VERSION = 1
BASE = "base.json"
# After an unreadable log, new records are numbered from here, so they never reuse a lost number.
LOST_SEQ = 1 << 40
_LEN = struct.Struct("<Q")


def write_json(path: str, data: dict):
    """Write `data` to `path` atomically (a temporary file, fsync, rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(src: str, dst: str):
    """Make `dst` an atomic copy of `src` (a hard link where possible)."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def memory_chain(path: str) -> list[str]:
    """The paths a memory file needs: itself, then its base, its base's base, ... (a tail
    names its base file, in the same directory); the missing ones are listed too, and end
    the chain. ValueError for an unreadable file or a chain that loops."""
    out = [path]
    while os.path.isfile(out[-1]):
        base = memory_file_base(out[-1])
        if base is None:
            break
        out.append(os.path.join(os.path.dirname(out[-1]), base))
        if len(out) > 64:
            raise ValueError(f"MEDS memory file {path}: its chain of bases is longer than 64 files")
    return out


def link_chain(src: str, directory: str, name: str | None = None):
    """Make `src` and the bases it needs (`memory_chain`) appear in `directory`: `src` as
    `name` (default: its own name), each base under the name its tail gives it."""
    chain = memory_chain(src)
    os.makedirs(directory, exist_ok=True)
    for i, path in enumerate(chain):
        dst = os.path.join(directory, name if i == 0 and name else os.path.basename(path))
        if i > 0 and os.path.exists(dst):
            continue  # already there (a base shared with an earlier link)
        publish(path, dst)


def snapshot_files(num_shards: int) -> list[str]:
    """File names of the shards of a training snapshot, in shard order."""
    return [f"shard-{i:05d}-of-{num_shards:05d}.npz" for i in range(num_shards)]


def write_manifest(directory: str, files: list[str], step: int | None, vectors: int):
    """Write the manifest that makes the shard files in `directory` a valid training snapshot."""
    write_json(
        os.path.join(directory, MANIFEST),
        {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "num_shards": len(files),
            "files": files,
            "step": step,
            "vectors": vectors,
            "time": time.time(),
        },
    )


def read_manifest(directory: str) -> tuple[dict, list[str]]:
    """The manifest of the training snapshot in `directory` and the paths of its shard files.
    FileNotFoundError if the manifest or a shard file is missing, ValueError if the manifest
    is unreadable or of another format or version."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no MEDS memory snapshot in {directory} (missing {MANIFEST})")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"corrupt MEDS memory manifest {path}: {e}") from e
    if manifest.get("format") != SNAPSHOT_FORMAT or manifest.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{path} is not a MEDS memory snapshot of version {SNAPSHOT_VERSION}")
    files = [os.path.join(directory, n) for n in manifest["files"]]
    missing = [p for f in files for p in memory_chain(f) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"MEDS memory snapshot {directory} is incomplete: missing {missing}")
    return manifest, files


def group_record(group_id: int, prompt_key, step: int, features: np.ndarray, correct: np.ndarray, answers=None):
    """The log record of an accepted group: ("G", group id, prompt key, step, features,
    correct, answers), answers a list of str or None per rollout, or None (not given)."""
    return ("G", group_id, prompt_key, step, features, correct, answers)


def unpack_group(record: tuple) -> tuple:
    """(group id, prompt key, step, features, correct, answers) of a group record; answers
    None for a record without them (the 6-field records of older logs)."""
    if record[0] != "G" or len(record) not in (6, 7):
        raise ValueError(f"not a group record: {record[:1]!r} with {len(record)} fields")
    return (*record[1:6], record[6] if len(record) == 7 else None)


@dataclass
class Base:
    """A recovery snapshot as read back: the memory as of log record `seq` (None: no snapshot
    was taken, replay from an empty memory) and its file's `name`, `step`, unfetched
    `results` {group id: (sizes, penalties, step)} and the cumulative counters `stat`."""

    seq: int = 0
    step: int = -1
    memory: ErrorMemory | None = None
    name: str | None = None
    results: dict[int, tuple] = field(default_factory=dict)
    stat: dict[str, float] = field(default_factory=dict)


def _frames(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of the payload of each complete record in `data`; stops at a torn one."""
    pos = 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if pos + _LEN.size + n > len(data):
            return
        yield pos + _LEN.size, pos + _LEN.size + n
        pos += _LEN.size + n


def _valid_length(data: bytes) -> int:
    return max((end for _, end in _frames(data)), default=0)


def _segment_start(path: str) -> int:
    return int(os.path.basename(path)[len("wal-") : -len(".log")])


class ShardLog:
    """The state directory of one memory shard: its write-ahead log and recovery snapshot.

    Not thread-safe: the caller serializes `append` and `rotate` (the actor holds its lock)."""

    def __init__(self, directory: str):
        self.dir = directory
        self.seq = 0  # number of the last record appended (or replayed)
        self.torn = 0  # torn last records dropped by `replay`
        self.file = None
        os.makedirs(directory, exist_ok=True)

    def clear(self):
        """Delete the files of an earlier run (a fresh shard must not replay them)."""
        for path in glob.glob(os.path.join(self.dir, "*")):
            os.unlink(path)

    def segments(self) -> list[str]:
        """The log segments, oldest first."""
        return sorted(glob.glob(os.path.join(self.dir, "wal-*.log")))

    def open(self):
        """Start a segment for the records after `seq` (appending to it if it exists)."""
        path = os.path.join(self.dir, f"wal-{self.seq + 1:012d}.log")
        if os.path.exists(path):  # its first record may be torn (killed mid-write): cut that off
            with open(path, "rb") as f:
                data = f.read()
            os.truncate(path, _valid_length(data))
        self.file = open(path, "ab")

    def rotate(self):
        """Close the current segment and start a new one."""
        self.file.close()
        self.open()

    def append(self, record) -> int:
        """Append `record` (any picklable value) as number `seq + 1`; return that number.
        Flushed to the OS before returning: a killed process loses nothing (a lost node
        loses the directory anyway)."""
        self.seq += 1
        data = pickle.dumps((self.seq, record), protocol=pickle.HIGHEST_PROTOCOL)
        self.file.write(_LEN.pack(len(data)) + data)
        self.file.flush()
        return self.seq

    def save_memory(self, memory, seq: int) -> str:
        """Save `memory` (an `ErrorMemory` or `FrozenMemory`), the memory as of record `seq`,
        as the next recovery snapshot's file, `base-<seq>-<random id>.npz` (the id keeps names
        apart across shards and runs in a training snapshot's directory); `commit_base` makes
        it the recovery base."""
        path = os.path.join(self.dir, f"base-{seq:012d}-{secrets.token_hex(4)}.npz")
        memory.save(path)
        return path

    def commit_base(self, memory_path: str, seq: int, step: int, results: dict[int, tuple], stat: dict):
        """Make `memory_path` (a memory file in this directory, e.g. from `save_memory(...,
        seq)`) the recovery base, with the latest `step`, the unfetched `results` {group id:
        (sizes, penalties, step)} and the counters `stat` to restore; delete the memory files
        it does not need and the closed segments whose records are all <= `seq`. Call
        `rotate` between taking the memory as of `seq` and this."""
        write_json(
            os.path.join(self.dir, BASE),
            {
                "seq": seq,
                "step": step,
                "memory": os.path.basename(memory_path),
                "results": {str(g): [r[0].tolist(), r[1].tolist(), r[2]] for g, r in results.items()},
                "stat": stat,
            },
        )
        self.collect(memory_path)
        for seg in self.segments()[:-1]:
            if self._last_seq(seg) <= seq:
                os.unlink(seg)

    def collect(self, memory_path: str | None):
        """Delete the memory files (`*.npz`) that `memory_path` (None: none) does not need
        (temporary files of writes under way are left alone)."""
        keep = set(memory_chain(memory_path)) if memory_path else set()
        for old in glob.glob(os.path.join(self.dir, "*.npz")):
            if old not in keep:
                os.unlink(old)

    def clear_temporary(self):
        """Delete the temporary files of writes that a killed process left."""
        for path in glob.glob(os.path.join(self.dir, ".tmp-*")):
            os.unlink(path)

    def load_base(self, config: MedsConfig) -> Base:
        """Read the recovery base and set `seq` to it; an empty `Base` if only a log exists.
        FileNotFoundError if the directory holds neither (e.g. a restart on another node),
        ValueError for an unreadable memory file."""
        path = os.path.join(self.dir, BASE)
        if not os.path.exists(path) and not self.segments():
            raise FileNotFoundError(f"no snapshot or log in {self.dir} (restarted on another node?)")
        base = Base()
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            base = Base(
                seq=data["seq"],
                step=data["step"],
                name=data["memory"],
                memory=ErrorMemory.load(os.path.join(self.dir, data["memory"]), config),
                results={
                    int(g): (np.asarray(s, np.int64), np.asarray(p), st) for g, (s, p, st) in data["results"].items()
                },
                stat=data["stat"],
            )
        self.seq = base.seq
        return base

    def replay(self, after: int) -> Iterator[tuple[int, object]]:
        """(seq, record) of every logged record numbered above `after`, in order, setting
        `seq` to each as it goes. A torn last record of a segment (the process was killed
        while writing it, so its call was never answered and is retried) is dropped and
        counted in `torn`; an unreadable record raises (pickle's error)."""
        for seg in self.segments():
            with open(seg, "rb") as f:
                data = f.read()
            for start, end in _frames(data):
                seq, record = pickle.loads(data[start:end])
                if seq > after:
                    self.seq = seq
                    yield seq, record
            if _valid_length(data) < len(data):
                self.torn += 1
                logger.warning("MEDS memory log %s: dropped a torn last record", seg)

    def read(self, after: int, upto: int) -> list[tuple[int, object]]:
        """(seq, record) of the logged records numbered after `after` up to `upto`, in order,
        without changing `seq` (the log may be appended to meanwhile; records up to `upto`
        are complete)."""
        out = []
        for seg in self.segments():
            if _segment_start(seg) > upto:
                break
            with open(seg, "rb") as f:
                data = f.read()
            for start, end in _frames(data):
                seq, record = pickle.loads(data[start:end])
                if seq > upto:
                    break
                if seq > after:
                    out.append((seq, record))
        return out

    def skip_lost(self):
        """After an unreadable log: number new records where no lost record could have been."""
        self.seq = max(self.seq, LOST_SEQ)

    def _last_seq(self, path: str) -> int:
        with open(path, "rb") as f:
            data = f.read()
        last = _segment_start(path) - 1
        for start, end in _frames(data):
            last = pickle.loads(data[start:end])[0]
        return last
