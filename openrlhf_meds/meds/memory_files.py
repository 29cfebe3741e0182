"""The error memory's storage and files: vectors kept as their bfloat16 bits, the memory file
(`ErrorMemory.save`, written array by array from a frozen view while the memory goes on),
tails (a memory file plus the groups assigned after it, `save_tail`) and reading them all
back (`load_memory`), with clear errors for missing or corrupt files. Atomic writes: a
temporary file, fsync, rename.

Files are npz archives with a JSON header; `ErrorMemory.state_dict` is what a memory file
holds. `memory.py` imports this module, not the other way: `load_memory` is given the
memory's class.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence

import numpy as np

from .config import MedsConfig

FORMAT = "openrlhf_meds.error_memory"
VERSION = 2  # 2: the vectors may be saved as bfloat16 bits ("vectors_bf16"); version 1 files load too
TAIL_FORMAT = "openrlhf_meds.error_memory_tail"
TAIL_VERSION = 1
MAX_TAIL_DEPTH = 64  # a tail's base may be a tail itself; a longer chain is refused (a cycle)


def pack_vectors(x: np.ndarray) -> np.ndarray:
    """Rows of float32 vectors as the memory stores them: the high 16 bits of each value
    (uint16) when every value is a bfloat16 number (its low 16 bits are zero, as for the
    default bf16-rounded features), else float32 unchanged. `unpack_vectors` gives back the
    same bits, so nothing computed from them changes."""
    x = np.ascontiguousarray(x, np.float32)
    bits = x.view(np.uint32)
    if (bits & np.uint32(0xFFFF)).any():
        return x
    return (bits >> np.uint32(16)).astype(np.uint16)


def unpack_vectors(data: np.ndarray) -> np.ndarray:
    """The float32 vectors of `pack_vectors` output."""
    if data.dtype == np.uint16:
        return (data.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return data


def load_memory(cls, path: str, config: MedsConfig | None = None):
    """`cls.load`: the `ErrorMemory` (of class `cls`) a memory file or tail at `path` holds."""
    return _load(cls, path, config, 0)


def _load(cls, path: str, config: MedsConfig | None, depth: int):
    if depth > MAX_TAIL_DEPTH:
        raise ValueError(f"corrupt MEDS memory checkpoint {path}: a chain of more than {MAX_TAIL_DEPTH} tails")
    state = _read_npz(path)
    header = state.pop("header")
    if header.get("format") == TAIL_FORMAT:
        return _load_tail(cls, path, header, state, config, depth)
    state.update(header)
    memory = cls(config or MedsConfig(**header["config"]))
    try:
        memory.load_state_dict(state)
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"corrupt MEDS memory checkpoint {path}: {e}") from e
    return memory


def _load_tail(cls, path: str, header: dict, state: dict, config: MedsConfig | None, depth: int):
    if header.get("version") != TAIL_VERSION:
        raise ValueError(f"unsupported MEDS memory tail version {header.get('version')!r} in {path}")
    base = header["base"]
    if base is None:
        memory = cls(config or MedsConfig(**header["config"]))
    else:
        memory = _load(cls, os.path.join(os.path.dirname(os.path.abspath(path)), base), config, depth + 1)
    feats, correct = state["features"], state["correct"]
    pos, touched = 0, set()
    for key, step, n, answers in header["groups"]:
        try:
            _, _, keys = memory.assign([key] * n, feats[pos : pos + n], correct[pos : pos + n], step, answers)
            touched.update(keys)
        except Exception:  # as the service did: a group whose assignment raised is skipped
            pass
        pos += n
    if pos != len(feats):
        raise ValueError(f"corrupt MEDS memory checkpoint {path}: its groups do not match its features")
    memory.recluster(touched)  # as the service's background work had
    return memory


class FrozenMemory:
    """An `ErrorMemory` as it was at `ErrorMemory.freeze()`, for `save`: the memory only ever
    replaces its arrays, so holding the current ones is a consistent copy, and the memory
    may go on changing (in another thread) while this is written."""

    def __init__(self, memory):
        self.header = {
            "format": FORMAT,
            "version": VERSION,
            "config": memory.config.to_dict(),
            "dim": memory.dim,
            "counters": dict(memory.counters),
            "rng": memory._rng.bit_generator.state,
            "keys": [[k[0], k[1]] for k in memory.keys],
        }
        self.keys = [(m.data, m.answers, m.labels, m.mst) for m in memory.keys.values()]
        self.answer_table = list(memory.answer_table)
        self.dim = memory.dim
        self.vectors = sum(len(m[0]) for m in self.keys)

    def save(self, path: str):
        """Write it to `path` in `ErrorMemory.save`'s format, atomically (a temporary file,
        fsync, rename), array by array from the keys' own arrays (no copy of the memory)."""
        keys = self.keys
        packed = bool(keys) and all(m[0].dtype == np.uint16 for m in keys)
        dim = self.dim if keys else 0
        blob = "".join(self.answer_table).encode()
        members = [
            ("header", [np.frombuffer(json.dumps(self.header).encode(), np.uint8)], np.uint8, None),
            ("sizes", [np.array([len(m[0]) for m in keys], np.int64)], np.int64, None),
            (
                "vectors_bf16" if packed else "vectors",
                [m[0] if packed else unpack_vectors(m[0]) for m in keys],
                np.uint16 if packed else np.float32,
                (self.vectors, dim),
            ),
            ("has_labels", [np.array([m[2] is not None for m in keys], bool)], bool, None),
            ("labels", [m[2] for m in keys if m[2] is not None], np.int32, None),
            ("mst_sizes", [np.array([-1 if m[3] is None else len(m[3]) for m in keys], np.int64)], np.int64, None),
            ("mst", [m[3] for m in keys if m[3] is not None], np.int32, None),
            ("answers", [m[1] for m in keys], np.int32, None),
            ("answer_table", [np.frombuffer(blob, np.uint8)], np.uint8, None),
            (
                "answer_offsets",
                [np.cumsum([0] + [len(a.encode()) for a in self.answer_table], dtype=np.int64)],
                np.int64,
                None,
            ),
        ]
        with _atomic(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, pieces, dtype, shape in members:
                _write_npy(zf, name, pieces, np.dtype(dtype), shape)


def save_tail(path: str, base: str | None, groups: Sequence[tuple], config: MedsConfig):
    """Write, atomically, a memory file that `ErrorMemory.load` reads as the memory file
    `base` (a file name in the same directory; None: an empty memory) after `groups` were
    assigned to it in order: (prompt key, step, features [n, d], correct [n], answers or
    None) each, as `ErrorMemory.assign(..., step=)` took them."""
    header = {
        "format": TAIL_FORMAT,
        "version": TAIL_VERSION,
        "base": base,
        "config": config.to_dict(),
        "groups": [[key, int(step), len(feats), answers] for key, step, feats, _, answers in groups],
    }
    feats = [np.asarray(g[2], np.float32) for g in groups]
    arrays = {
        "features": np.concatenate(feats) if feats else np.empty((0, 0), np.float32),
        "correct": np.concatenate([np.asarray(g[3], bool) for g in groups]) if groups else np.empty(0, bool),
    }
    with _atomic(path) as f:
        np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)


def memory_file_base(path: str) -> str | None:
    """The base file name of a tail written by `save_tail` (in the same directory), None for a
    memory file of `save`; ValueError for an unreadable file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(data["header"].tobytes().decode())
    except _READ_ERRORS as e:
        raise ValueError(f"corrupt MEDS memory checkpoint {path}: {e}") from e
    return header.get("base") if header.get("format") == TAIL_FORMAT else None


_READ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    zipfile.BadZipFile,
    EOFError,
    UnicodeDecodeError,
    io.UnsupportedOperation,
)


def _read_npz(path: str) -> dict:
    """Every array of an npz memory file, with its JSON header decoded (clear errors)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no MEDS memory checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
        state["header"] = json.loads(state["header"].tobytes().decode())
    except _READ_ERRORS as e:
        raise ValueError(f"corrupt MEDS memory checkpoint {path}: {e}") from e
    return state


@contextlib.contextmanager
def _atomic(path: str):
    """A binary file that becomes `path` (fsynced, renamed) only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_npy(zf: zipfile.ZipFile, name: str, pieces: list, dtype: np.dtype, shape: tuple | None):
    """One `.npy` member of an npz, written piece by piece (the pieces concatenated, in C
    order, make the array; `shape` None: 1-D)."""
    pieces = [np.ascontiguousarray(p, dtype) for p in pieces]
    if shape is None:
        shape = (sum(p.size for p in pieces),)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
        np.lib.format.write_array_header_1_0(out, header)
        for p in pieces:
            if p.size:
                out.write(p.reshape(-1).view(np.uint8))
