"""wal.py without Ray: log records replay in order and equal, a torn last record is dropped,
rotation at a recovery snapshot keeps exactly what the snapshot does not cover, snapshots and
manifests round-trip and fail clearly when missing or corrupt."""

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.meds.memory_files import save_tail
from openrlhf_meds.memory.wal import (
    LOST_SEQ,
    MANIFEST,
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    ShardLog,
    group_record,
    link_chain,
    memory_chain,
    read_manifest,
    snapshot_files,
    unpack_group,
    write_manifest,
)

D, N = 6, 8  # feature width, rollouts per group
CFG = MedsConfig()


def group(i: int) -> tuple:
    """A log record of a submitted group, as the actor writes it."""
    rng = np.random.default_rng(i)
    return ("G", 1000 + i, f"prompt-{i % 3}", i // 3, rng.normal(size=(N, D)).astype(np.float32), rng.random(N) < 0.5)


def assert_records(got: list, expected: list):
    """`got` (seq, record) pairs equal `expected`, arrays included."""
    assert [seq for seq, _ in got] == [seq for seq, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        assert len(a) == len(b) and a[:4] == b[:4]
        for x, y in zip(a[4:], b[4:]):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype


def fresh(directory) -> ShardLog:
    log = ShardLog(str(directory))
    log.clear()
    log.open()
    return log


def reopen(directory) -> tuple[ShardLog, list]:
    """A restarted shard's view: its recovery base, then every record after it."""
    log = ShardLog(str(directory))
    base = log.load_base(CFG)
    return log, list(log.replay(after=base.seq))


def names(directory) -> list[str]:
    """The directory's file names, the random id of memory files as <id>."""
    return sorted(re.sub(r"-[0-9a-f]{8}\.npz$", "-<id>.npz", n) for n in os.listdir(directory))


def filled_memory() -> ErrorMemory:
    memory = ErrorMemory(CFG)
    for i in range(4):
        _, _, key, _, feats, ok = group(i)
        memory.step([key] * N, feats, ok)
    return memory


def test_replay_returns_the_appended_records_in_order(tmp_path):
    log = fresh(tmp_path)
    records = [group(0), ("F", [1000]), group(1), group(2), ("F", [1001, 1002])]
    assert [log.append(r) for r in records] == [1, 2, 3, 4, 5]
    log.file.close()
    again, got = reopen(tmp_path)
    assert_records(got, list(enumerate(records, start=1)))
    assert again.seq == 5 and again.torn == 0


@pytest.mark.parametrize("keep", [3, 20, -5])  # inside the length prefix, the pickle, one byte short
def test_torn_last_record_is_dropped_and_the_earlier_ones_replay(tmp_path, keep):
    log = fresh(tmp_path)
    records = [group(i) for i in range(3)]
    for r in records:
        log.append(r)
    log.file.close()
    (seg,) = log.segments()
    dumps = lambda seq, r: pickle.dumps((seq, r), protocol=pickle.HIGHEST_PROTOCOL)
    size_two = sum(8 + len(dumps(seq, r)) for seq, r in enumerate(records[:2], 1))
    cut = size_two + keep if keep > 0 else os.path.getsize(seg) + keep
    os.truncate(seg, cut)
    again, got = reopen(tmp_path)
    assert_records(got, [(1, records[0]), (2, records[1])])
    assert again.seq == 2 and again.torn == 1


def test_a_segment_whose_first_record_was_torn_is_cut_before_appending(tmp_path):
    log = fresh(tmp_path)
    log.append(group(0))
    log.file.close()
    (seg,) = log.segments()
    os.truncate(seg, 30)  # killed while writing record 1: the restart appends to the same file
    again, got = reopen(tmp_path)
    assert got == [] and again.seq == 0 and again.torn == 1
    again.open()
    again.append(group(7))
    again.file.close()
    assert log.segments() == [seg]
    third, got = reopen(tmp_path)
    assert_records(got, [(1, group(7))])
    assert third.torn == 0


def test_rotation_at_snapshot_keeps_only_what_the_snapshot_does_not_cover(tmp_path):
    log = fresh(tmp_path)
    records = {i: group(i) for i in range(1, 8)}
    for i in range(1, 6):
        log.append(records[i])
    memory = filled_memory()
    # A snapshot of the memory as of record 3, taken once records 4 and 5 were logged.
    path = log.save_memory(memory, 3)
    log.rotate()
    results = {1002: (np.array([0, 2], np.int64), np.array([0.0, 0.1]), 0)}
    log.commit_base(path, 3, step=1, results=results, stat={"restarts": 1, "lost_groups": 0})
    assert names(tmp_path) == [
        "base-000000000003-<id>.npz",
        "base.json",
        "wal-000000000001.log",
        "wal-000000000006.log",
    ]
    for i in (6, 7):
        log.append(records[i])
    _, got = reopen(tmp_path)
    assert_records(got, [(i, records[i]) for i in range(4, 8)])

    # The next snapshot covers everything logged: only the fresh segment is left.
    path = log.save_memory(memory, 7)
    log.rotate()
    log.commit_base(path, 7, step=2, results={}, stat={})
    assert names(tmp_path) == ["base-000000000007-<id>.npz", "base.json", "wal-000000000008.log"]
    log.append(("F", [1002]))
    log.file.close()
    again, got = reopen(tmp_path)
    assert got == [(8, ("F", [1002]))] and again.seq == 8


def test_recovery_base_round_trips(tmp_path):
    log = fresh(tmp_path)
    log.append(group(0))
    memory = filled_memory()
    path = log.save_memory(memory, 1)
    log.rotate()
    results = {1001: (np.array([0, 3, 1], np.int64), np.array([0.0, 0.25, 0.5]), 4)}
    log.commit_base(path, 1, step=4, results=results, stat={"restarts": 2, "lost_groups": 1})
    base = ShardLog(str(tmp_path)).load_base(CFG)
    assert (base.seq, base.step, base.stat) == (1, 4, {"restarts": 2, "lost_groups": 1})
    assert base.memory.stats() == memory.stats()
    for name, value in memory.state_dict().items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(base.memory.state_dict()[name], value)
    assert list(base.results) == [1001]
    sizes, pens, step = base.results[1001]
    assert sizes.dtype == np.int64 and sizes.tolist() == [0, 3, 1]
    assert pens.tolist() == [0.0, 0.25, 0.5] and step == 4


def test_no_snapshot_replays_the_log_from_an_empty_memory(tmp_path):
    log = fresh(tmp_path)
    log.append(group(0))
    log.file.close()
    base = ShardLog(str(tmp_path)).load_base(CFG)
    assert (base.seq, base.step, base.memory, base.results, base.stat) == (0, -1, None, {}, {})


def test_missing_or_corrupt_recovery_state_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no snapshot or log"):
        ShardLog(str(tmp_path / "empty")).load_base(CFG)

    log = fresh(tmp_path / "a")
    path = log.save_memory(filled_memory(), 0)
    log.rotate()
    log.commit_base(path, 0, step=0, results={}, stat={})
    with open(path, "r+b") as f:
        f.write(b"garbage!" * 4)
    with pytest.raises(ValueError, match="corrupt MEDS memory checkpoint"):
        ShardLog(str(tmp_path / "a")).load_base(CFG)
    os.unlink(path)
    with pytest.raises(FileNotFoundError, match="no MEDS memory checkpoint"):
        ShardLog(str(tmp_path / "a")).load_base(CFG)


def test_an_unreadable_record_raises_after_the_readable_ones(tmp_path):
    log = fresh(tmp_path)
    for i in range(3):
        log.append(group(i))
    log.file.close()
    (seg,) = log.segments()
    with open(seg, "r+b") as f:
        first = int.from_bytes(f.read(8), "little")
        f.seek(8 + first + 8)  # the second record's pickle
        f.write(b"\xff\xff\xff\xff")
    again = ShardLog(str(tmp_path))
    records = again.replay(after=0)
    assert_records([next(records)], [(1, group(0))])
    with pytest.raises(pickle.UnpicklingError):
        next(records)
    assert again.seq == 1
    again.skip_lost()
    again.open()
    assert again.append(("F", [1000])) == LOST_SEQ + 1


def test_replay_keeps_the_answers_and_reads_older_records_without_them(tmp_path):
    log = fresh(tmp_path)
    _, gid, key, step, feats, ok = group(0)
    answers = ["42", None, "\\frac{1}{2}", "7", "7", None, "x", "42"]
    log.append(group_record(gid, key, step, feats, ok, answers))
    log.append(group(1))  # a group record as logs wrote them before answers (6 fields)
    log.append(group_record(*group(2)[1:]))  # no answers given
    log.file.close()
    _, got = reopen(tmp_path)
    (_, first), (_, old), (_, none) = got
    g, k, st, f, c, a = unpack_group(first)
    assert (g, k, st, a) == (gid, key, step, answers)
    np.testing.assert_array_equal(f, feats)
    np.testing.assert_array_equal(c, ok)
    assert unpack_group(old)[:3] == group(1)[1:4] and unpack_group(old)[5] is None
    assert unpack_group(none)[5] is None
    with pytest.raises(ValueError, match="not a group record"):
        unpack_group(("F", [1000]))


def test_clear_deletes_an_earlier_run(tmp_path):
    log = fresh(tmp_path)
    log.append(group(0))
    log.file.close()
    assert os.listdir(tmp_path)
    fresh(tmp_path)
    assert os.listdir(tmp_path) == ["wal-000000000001.log"]
    assert os.path.getsize(tmp_path / "wal-000000000001.log") == 0


def test_manifest_round_trip_and_clear_errors(tmp_path):
    files = snapshot_files(2)
    assert files == ["shard-00000-of-00002.npz", "shard-00001-of-00002.npz"]
    for name in files:
        filled_memory().save(str(tmp_path / name))
    write_manifest(str(tmp_path), files, step=7, vectors=64)
    manifest, paths = read_manifest(str(tmp_path))
    assert paths == [str(tmp_path / n) for n in files]
    assert (manifest["format"], manifest["version"], manifest["num_shards"]) == (SNAPSHOT_FORMAT, SNAPSHOT_VERSION, 2)
    assert (manifest["files"], manifest["step"], manifest["vectors"]) == (files, 7, 64)

    with pytest.raises(FileNotFoundError, match="missing manifest.json"):
        read_manifest(str(tmp_path / "nothing"))
    other = json.loads((tmp_path / MANIFEST).read_text()) | {"version": SNAPSHOT_VERSION + 1}
    (tmp_path / MANIFEST).write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not a MEDS memory snapshot of version"):
        read_manifest(str(tmp_path))
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt MEDS memory manifest"):
        read_manifest(str(tmp_path))
    write_manifest(str(tmp_path), files, step=None, vectors=64)
    os.unlink(tmp_path / files[1])
    with pytest.raises(FileNotFoundError, match="incomplete"):
        read_manifest(str(tmp_path))


def test_read_returns_a_range_of_records_and_leaves_the_log_alone(tmp_path):
    log = fresh(tmp_path)
    records = [group(i) for i in range(6)]
    for i, r in enumerate(records):
        log.append(r)
        if i == 2:
            log.rotate()  # the range spans two segments
    assert_records(log.read(after=1, upto=4), [(i, records[i - 1]) for i in (2, 3, 4)])
    assert log.read(after=6, upto=9) == [] and log.seq == 6
    assert log.append(("F", [1000])) == 7


def test_a_tail_is_linked_with_its_base_and_a_snapshot_needs_both(tmp_path):
    memory = filled_memory()
    (tmp_path / "a").mkdir()
    memory.save(str(tmp_path / "a" / "base-x.npz"))
    tail = str(tmp_path / "a" / "shard-00000-of-00001.npz")
    save_tail(tail, "base-x.npz", [unpack_group(group(i))[1:] for i in (4, 5)], CFG)
    assert memory_chain(tail) == [tail, str(tmp_path / "a" / "base-x.npz")]
    want = ErrorMemory.load(tail).state_dict()
    for directory, name in (("b", None), ("c", "restored.npz")):
        link_chain(tail, str(tmp_path / directory), name)
        got = ErrorMemory.load(str(tmp_path / directory / (name or "shard-00000-of-00001.npz"))).state_dict()
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got[key], value)
    assert sorted(os.listdir(tmp_path / "c")) == ["base-x.npz", "restored.npz"]
    write_manifest(str(tmp_path / "a"), ["shard-00000-of-00001.npz"], step=2, vectors=1)
    assert read_manifest(str(tmp_path / "a"))[1] == [tail]
    os.unlink(tmp_path / "a" / "base-x.npz")
    with pytest.raises(FileNotFoundError, match="incomplete: missing .*base-x.npz"):
        read_manifest(str(tmp_path / "a"))


def test_commit_keeps_the_base_a_tail_needs_and_deletes_other_memory_files(tmp_path):
    log = fresh(tmp_path)
    log.append(group(0))
    old = log.save_memory(filled_memory(), 1)
    base = log.save_memory(filled_memory(), 1)
    save_tail(str(tmp_path / "restored-1.npz"), os.path.basename(base), [unpack_group(group(1))[1:]], CFG)
    log.rotate()
    log.commit_base(str(tmp_path / "restored-1.npz"), 1, step=0, results={}, stat={})
    assert not os.path.exists(old) and os.path.exists(base)
    loaded = ShardLog(str(tmp_path)).load_base(CFG)
    assert (
        loaded.name == "restored-1.npz" and loaded.memory.stats()["vectors"] == filled_memory().stats()["vectors"] + N
    )


def test_wal_imports_no_ray():
    code = "import sys, openrlhf_meds.memory.wal; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["False"]
