"""The MemoryActor at a full run's size: 8 shards holding 4.1M and 40M stored vectors.

The official run stores 8,192 vectors a step (512 prompt groups x 16 rollouts): 4.1M after
500 steps, 40M after 100 epochs over ~25K prompts (~1,600 vectors per prompt). For each size
this script builds, in bulk, the state the memory holds after that many steps, loads it into
8 real MemoryActor shards (`MemoryClient.start`) and measures:

- the critical path of a step: 512 groups x 16 rollouts submitted over `--stream-seconds`
  (as engines finish them), then all fetched, as the trainer does; timed from the last
  acknowledged submit to the last penalty fetched;
- the background work of a step (assignments and re-clustering, summed over the shards) and
  when it was done, counted from the last submit;
- each shard's resident memory (RSS) and the bytes per stored vector;
- a training snapshot (`client.snapshot`): how long the call takes (a training step waits
  for it), its size, and the critical path of the step right after it;
- the restore of that snapshot into a fresh cluster (fresh shards);
- a shard SIGKILLed (by pid) mid-step, several steps after the last snapshot: its restart
  with the replay of its write-ahead log.

The penalties of the steps after the snapshot are computed twice, by the cluster that took
the snapshot (its shard killed in the last step) and by the fresh cluster that restored it
(undisturbed): they must be identical.

The bulk state is what `ErrorMemory` holds after the same steps of rollouts (see `build_shard`
and docs/benchmarks.md): the same vectors in the same order per (prompt, verdict) key, the
same final answers, and labels and spanning trees from the real clustering of each key's
whole memory. Rollouts are synthetic (per prompt a few error modes plus noise, rounded to
bf16 as the default `--meds.feature_dtype` does; accuracy uniform per prompt).

    bash scripts/run.sh bench memory_full_run                          # 4.1M and 40M
    bash scripts/run.sh bench memory_full_run --sizes 4.1M             # a few minutes
    bash scripts/run.sh bench memory_full_run --workdir DIR            # resumes what DIR holds

Each phase (build, run, restore) stores its results in `--workdir`/<size>/ and is skipped
when they are there; the built state is kept, the cluster's own files are deleted once a size
is done.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.meds.clustering import normalize_rows, recluster
from openrlhf_meds.memory.routing import shard_of
from openrlhf_meds.memory.wal import read_manifest, snapshot_files, write_manifest

MODES = 8  # error modes per prompt: the first half for wrong rollouts, the second for right ones
BLOCK = 64  # occurrences of a prompt drawn from one random stream (any one is cheap to redo)
T0 = time.perf_counter()


def progress(text: str):
    """Print a line with the seconds since the start."""
    print(f"[{time.perf_counter() - T0:7.1f} s] {text}", flush=True)


@dataclass(frozen=True)
class Scale:
    """The modelled run: prompts in the data set, groups per step, rollouts per group,
    feature width, memory shards, seed."""

    prompts: int
    groups: int
    rollouts: int
    dim: int
    shards: int
    seed: int

    @property
    def per_step(self) -> int:
        return self.groups * self.rollouts


def prompt_keys(prompts: int) -> list[str]:
    """Memory keys shaped like the trainer's (`prompt_key`: a 12-byte blake2b hex digest)."""
    return [hashlib.blake2b(f"prompt {p}".encode(), digest_size=12).hexdigest() for p in range(prompts)]


def schedule(scale: Scale, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, occurrence) of every group of steps 0..steps-1, each [steps, groups]: the data
    set is drawn in a fresh random order every epoch, `groups` prompts a step; a prompt's
    occurrence counts its earlier draws."""
    n = steps * scale.groups
    epochs = math.ceil(n / scale.prompts)
    stream = np.concatenate(
        [np.random.default_rng([scale.seed, 1, e]).permutation(scale.prompts) for e in range(epochs)]
    )[:n]
    order = np.argsort(stream, kind="stable")
    ranks = np.arange(n) - np.searchsorted(stream[order], stream[order])  # draws of the same prompt before
    occurrence = np.empty(n, np.int64)
    occurrence[order] = ranks
    return stream.reshape(steps, scale.groups), occurrence.reshape(steps, scale.groups)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32: what
    `--meds.feature_dtype bf16` (the default) stores (no NaN or inf here)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def answer_texts(p: int) -> list[str]:
    """The final answer of each mode of prompt p: one per wrong mode, the right one for all
    right modes."""
    right = str(p % 99991)
    return [str((p * 7919 + m * 104729) % 99991) for m in range(MODES // 2)] + [right] * (MODES // 2)


def rollouts(scale: Scale, p: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occurrences first..first+count-1 of prompt p: features [count, R, d] (float32,
    bf16-rounded), verdicts [count, R] and mode ids [count, R] (index into `answer_texts`)."""
    prm = np.random.default_rng([scale.seed, 2, p])
    modes = prm.normal(size=(MODES, scale.dim)) * 2.0
    accuracy = prm.uniform(0, 1)
    R, d = scale.rollouts, scale.dim
    feats, correct, which = [], [], []
    for block in range(first // BLOCK, (first + count - 1) // BLOCK + 1):
        rng = np.random.default_rng([scale.seed, 3, p, block])
        ok = rng.random((BLOCK, R)) < accuracy
        mode = rng.integers(0, MODES // 2, (BLOCK, R)) + ok * (MODES // 2)
        noise = rng.normal(scale=0.3, size=(BLOCK, R, d))
        lo, hi = max(first - block * BLOCK, 0), min(first + count - block * BLOCK, BLOCK)
        feats.append(modes[mode[lo:hi]] + noise[lo:hi])
        correct.append(ok[lo:hi])
        which.append(mode[lo:hi])
    return round_bf16(np.concatenate(feats)), np.concatenate(correct), np.concatenate(which)


def step_groups(scale: Scale, sched: np.ndarray, occ: np.ndarray, keys: list[str], step: int) -> list[tuple]:
    """The groups of `step` as the trainer submits them: (prompt key, features, correct, answers)."""
    out = []
    for p, o in zip(sched[step], occ[step]):
        feats, ok, mode = rollouts(scale, int(p), int(o), 1)
        texts = answer_texts(int(p))
        out.append((keys[p], feats[0], ok[0], [texts[m] for m in mode[0]]))
    return out


# ---------------------------------------------------------------------------------- bulk build


def build_shard(scale: Scale, steps: int, shard: int, path: str) -> dict:
    """Write shard `shard`'s memory after steps 0..steps-1 (`ErrorMemory.save` format).

    Per (prompt, verdict) key it holds what `ErrorMemory` holds after those steps with the
    background re-clustering done: the key's vectors and answers in arrival order (a prompt's
    occurrences in order, each group's rows in order), and, for the targeted (wrong) keys,
    the labels and spanning tree of the real clustering (`recluster`) of the whole key; the
    right keys are never clustered under target=wrong (no labels, an empty tree). Differences
    from a step-by-step run, none of which changes a penalty: answer ids are numbered in
    another order; the spanning tree is built in one go (an exact minimum spanning tree, as
    the incremental one; they can differ only where distances tie); only the `rollouts` and
    `stored` counters are set."""
    sched, _ = schedule(scale, steps)
    counts = np.bincount(sched.ravel(), minlength=scale.prompts)
    keys = prompt_keys(scale.prompts)
    memory = ErrorMemory(MedsConfig())
    state = memory.state_dict()
    table: dict[str, int] = {}
    names, sizes, has_labels, mst_sizes = [], [], [], []
    vectors, answers, labels, msts = [], [], [], []
    for p in range(scale.prompts):
        if counts[p] == 0 or shard_of(keys[p], scale.shards) != shard:
            continue
        feats, correct, mode = rollouts(scale, p, 0, int(counts[p]))
        feats, correct, mode = feats.reshape(-1, scale.dim), correct.ravel(), mode.ravel()
        ids = np.array([table.setdefault(a, len(table)) for a in answer_texts(p)], np.int32)
        for ok in (False, True):
            rows = np.nonzero(correct == ok)[0]
            if len(rows) == 0:
                continue
            names.append([keys[p], ok])
            sizes.append(len(rows))
            vectors.append(feats[rows])
            answers.append(ids[mode[rows]])
            if ok:  # target=wrong: right keys are stored, never clustered
                has_labels.append(False)
                mst_sizes.append(0)
            else:
                parent, lab = recluster(normalize_rows(feats[rows]))
                has_labels.append(True)
                labels.append(lab.astype(np.int32))
                mst_sizes.append(len(parent))
                msts.append(parent)
    blob = "".join(table).encode()
    lengths = [len(a.encode()) for a in table]
    n = int(sum(sizes))
    state.update(
        dim=scale.dim,
        counters={"rollouts": n, "stored": n},
        keys=names,
        sizes=np.array(sizes, np.int64),
        vectors=np.concatenate(vectors) if vectors else np.empty((0, scale.dim), np.float32),
        has_labels=np.array(has_labels, bool),
        labels=np.concatenate(labels) if labels else np.empty(0, np.int32),
        mst_sizes=np.array(mst_sizes, np.int64),
        mst=np.concatenate(msts) if msts else np.empty(0, np.int32),
        answers=np.concatenate(answers) if answers else np.empty(0, np.int32),
        answer_table=np.frombuffer(blob, np.uint8),
        answer_offsets=np.cumsum([0, *lengths], dtype=np.int64),
    )
    memory.load_state_dict(state)
    memory.save(path)
    return {"shard": shard, "vectors": n, "keys": len(names)}


def _build_one(job):
    return build_shard(*job)


def build(scale: Scale, steps: int, directory: str, procs: int) -> dict:
    """The whole memory after `steps` steps as a MemoryClient snapshot in `directory`."""
    os.makedirs(directory, exist_ok=True)
    files = snapshot_files(scale.shards)
    jobs = [(scale, steps, s, os.path.join(directory, f)) for s, f in enumerate(files)]
    t0 = time.perf_counter()
    out = []
    with multiprocessing.get_context("spawn").Pool(procs) if procs > 1 else contextlib.nullcontext() as pool:
        for info in pool.imap_unordered(_build_one, jobs) if pool else map(_build_one, jobs):
            out.append(info)
            progress(f"  built shard {info['shard']}: {info['vectors']:,} vectors, {info['keys']:,} keys")
    vectors = sum(i["vectors"] for i in out)
    write_manifest(directory, files, steps, vectors)
    return {"vectors": vectors, "keys": sum(i["keys"] for i in out), "build_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------- the cluster


def start_client(scale: Scale, state_dir: str, interval: int):
    """8 fresh MemoryActor shards (`MemoryClient.start`), up and answering."""
    from openrlhf_meds.memory.client import MemoryClient

    shutil.rmtree(state_dir, ignore_errors=True)
    cfg = MedsConfig(memory_shards=scale.shards, memory_dir=state_dir, snapshot_interval=interval)
    # num_cpus=0: Ray only counts CPUs (it does not pin them); all shards share this machine's cores.
    client = MemoryClient.start(cfg, num_cpus=0)
    client.placement()
    return client


def rss(client) -> list[int]:
    """Resident memory of each shard's process, bytes."""
    import psutil

    return [psutil.Process(p["pid"]).memory_info().rss for p in client.placement()]


def run_step(client, step: int, groups: list[tuple], stream_s: float, kill_shard: int | None = None) -> dict:
    """Submit the groups over `stream_s` seconds, then fetch them all, as the trainer does.
    `kill_shard`: SIGKILL that shard's process once half the groups are acknowledged and
    wait until Ray has restarted it (it replays its log) before submitting the rest."""
    import ray

    gap = stream_s / len(groups)
    gids, acks, out = [], [], {}
    t_start = time.perf_counter()
    for g, (key, feats, ok, answers) in enumerate(groups):
        if kill_shard is not None and g == len(groups) // 2:
            ray.get(acks)
            pid = client.placement()[kill_shard]["pid"]
            t_kill = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            new = ray.get(client.actors[kill_shard].node.remote())  # the restarted process, recovered
            out["recover_s"] = time.perf_counter() - t_kill
            assert new["pid"] != pid
        gid, ack = client.submit(key, step, feats, ok, answers=answers)
        gids.append(gid)
        acks.append(ack)
        time.sleep(max(0.0, t_start + (g + 1) * gap - time.perf_counter()))
    ray.get(acks)
    t_last = time.perf_counter()
    results = client.fetch(gids)
    out["critical_s"] = time.perf_counter() - t_last
    client.flush()  # the re-clustering, and a recovery snapshot if one is being written
    out["bg_done_s"] = time.perf_counter() - t_last
    t0 = time.perf_counter()
    stats = client.stats(reset=True)
    out["stats_s"] = time.perf_counter() - t0
    out["assign_s"] = stats["assign_ms_sum"] / 1e3
    out["recluster_s"] = stats["recluster_ms_sum"] / 1e3
    out["base_write_s"] = stats["base_write_ms_max"] / 1e3
    out["latency_max_ms"] = stats["assign_latency_ms_max"]
    out["vectors"] = stats["vectors"]
    out["sizes"] = np.concatenate([r[0] for r in results])
    out["penalties"] = np.concatenate([r[1] for r in results])
    return out


def dir_bytes(directory: str) -> int:
    """Bytes of the files in `directory` (hard links to files elsewhere included)."""
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))


def steps_of(steps: int, args) -> dict:
    """The steps each phase runs after the built state's `steps`: one warm-up step (it loads
    the compiled clustering code, as a trainer's first step does), the timed steps, then
    the snapshot, then steps until the one in which a shard is killed."""
    snap = steps + 1 + args.steps
    return {"warm": steps, "timed": range(steps + 1, snap), "after": range(snap, snap + args.wal_steps + 1)}


def run_phase(scale: Scale, args, steps: int, built: str, wd: str) -> dict:
    """Cluster 1: load the built state, time steps, snapshot, then steps until a shard is
    SIGKILLed mid-step; the penalties of the steps after the snapshot go to `penalties.npz`."""
    plan = steps_of(steps, args)
    sched, occ = schedule(scale, plan["after"][-1] + 1)
    keys = prompt_keys(scale.prompts)
    groups = lambda t: step_groups(scale, sched, occ, keys, t)
    snap = os.path.join(wd, "snapshot")
    shutil.rmtree(snap, ignore_errors=True)
    t0 = time.perf_counter()
    client = start_client(scale, os.path.join(wd, "state-1"), args.snapshot_interval)
    res: dict = {"start_s": time.perf_counter() - t0, "rss_empty": rss(client)}
    try:
        t0 = time.perf_counter()
        manifest = client.restore(built)
        res["load_s"] = time.perf_counter() - t0
        client.flush()
        res["load_flush_s"] = time.perf_counter() - t0
        res["loaded_vectors"] = client.stats(reset=True)["vectors"]
        assert res["loaded_vectors"] == manifest["vectors"], (res["loaded_vectors"], manifest["vectors"])
        res["rss_loaded"] = rss(client)
        progress(
            f"  loaded {res['loaded_vectors']:,} vectors into {scale.shards} shards in {res['load_s']:.1f} s; "
            f"RSS per shard {max(res['rss_loaded']) / 2**20:.0f} MiB max"
        )
        r = run_step(client, plan["warm"], groups(plan["warm"]), args.stream_seconds)
        progress(f"  step {plan['warm']} (warm-up): critical path {r['critical_s'] * 1e3:.1f} ms")
        res["timed"] = []
        for t in plan["timed"]:
            r = run_step(client, t, groups(t), args.stream_seconds)
            res["timed"].append({k: v for k, v in r.items() if k not in ("sizes", "penalties")})
            progress(
                f"  step {t}: critical path {r['critical_s'] * 1e3:.1f} ms, assignments {r['assign_s']:.2f} s, "
                f"re-clustering {r['recluster_s']:.2f} s, background done {r['bg_done_s']:.2f} s after the last "
                f"submit, stats() {r['stats_s'] * 1e3:.0f} ms"
            )
        res["bytes_per_vector_arrays"] = client.stats(reset=False)["bytes_per_vector"]
        res["rss_steps"] = rss(client)
        t0 = time.perf_counter()
        client.snapshot(snap, step=plan["after"][0])
        res["snapshot_s"] = time.perf_counter() - t0
        res["snapshot_bytes"] = dir_bytes(snap)
        res["snapshot_call_bytes"] = sum(os.path.getsize(p) for p in read_manifest(snap)[1])
        progress(
            f"  snapshot: {res['snapshot_s']:.2f} s, {res['snapshot_bytes'] / 1e9:.2f} GB "
            f"({res['snapshot_call_bytes'] / 1e6:.1f} MB written by the call)"
        )
        pens = {}
        for t in plan["after"]:
            kill = 0 if t == plan["after"][-1] else None
            r = run_step(client, t, groups(t), args.stream_seconds, kill)
            pens[f"sizes_{t}"], pens[f"penalties_{t}"] = r.pop("sizes"), r.pop("penalties")
            if t == plan["after"][0]:
                res["after_snapshot"] = r
                res["rss_snapshot"] = rss(client)
            if kill is not None:
                res["killed"] = r
                stats = client.stats(reset=False)
                res["replayed_groups"] = stats["replayed_groups"]
                res["restarts"] = stats["restarts"]
            progress(
                f"  step {t}{' (shard 0 killed mid-step)' if kill is not None else ''}: critical path "
                f"{r['critical_s'] * 1e3:.1f} ms"
                + (f", recovered in {r['recover_s']:.1f} s" if kill is not None else "")
                + (f", snapshot written in the background in {r['base_write_s']:.1f} s" if r["base_write_s"] else "")
            )
        res["final_vectors"] = client.stats(reset=False)["vectors"]
        np.savez(os.path.join(wd, "penalties.npz"), **pens)
    finally:
        client.shutdown()
    return res


def restore_phase(scale: Scale, args, steps: int, wd: str) -> dict:
    """Cluster 2: fresh shards restore the snapshot, then run the same steps undisturbed;
    their penalties are compared with cluster 1's."""
    plan = steps_of(steps, args)
    sched, occ = schedule(scale, plan["after"][-1] + 1)
    keys = prompt_keys(scale.prompts)
    client = start_client(scale, os.path.join(wd, "state-2"), args.snapshot_interval)
    res: dict = {}
    try:
        t0 = time.perf_counter()
        manifest = client.restore(os.path.join(wd, "snapshot"))
        res["restore_s"] = time.perf_counter() - t0
        client.flush()
        res["restore_flush_s"] = time.perf_counter() - t0
        res["restored_vectors"] = client.stats(reset=True)["vectors"]
        res["snapshot_vectors"] = manifest["vectors"]
        res["rss_restored"] = rss(client)
        progress(f"  restored {res['restored_vectors']:,} vectors into fresh shards in {res['restore_s']:.1f} s")
        saved = np.load(os.path.join(wd, "penalties.npz"))
        same = {"restore": True, "replay": True}
        for t in plan["after"]:
            r = run_step(client, t, step_groups(scale, sched, occ, keys, t), 0.0)
            equal = np.array_equal(r["penalties"], saved[f"penalties_{t}"]) and np.array_equal(
                r["sizes"], saved[f"sizes_{t}"]
            )
            same["replay" if t == plan["after"][-1] else "restore"] &= bool(equal)
            res.setdefault("penalized", []).append(int((r["penalties"] > 0).sum()))
        res["identical_after_restore"], res["identical_after_replay"] = same["restore"], same["replay"]
        progress(
            f"  penalties identical: after the restore {same['restore']}, after the kill and replay {same['replay']}"
        )
    finally:
        client.shutdown()
    return res


# ---------------------------------------------------------------------------------- driver


def parse_size(text: str, scale: Scale) -> tuple[str, int]:
    """(label, steps) of a size such as 4.1M, 40M, 250K or 2048 (stored vectors)."""
    mult = {"K": 1e3, "M": 1e6}.get(text[-1].upper(), 1)
    value = float(text[:-1] if mult != 1 else text) * mult
    return text, max(1, round(value / scale.per_step))


def load_json(path: str):
    """The JSON in `path`."""
    with open(path) as f:
        return json.load(f)


def save_json(path: str, data):
    """Write `data` (numpy values included) to `path` as JSON, atomically."""
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, default=lambda x: x.tolist() if isinstance(x, np.ndarray) else float(x))
    os.replace(path + ".tmp", path)


def row(label: str, scale: Scale, b: dict, r: dict, s: dict) -> dict:
    """One table row from the three phases' results."""
    timed = r["timed"]
    vectors = timed[-1]["vectors"]
    return {
        "size": label,
        "vectors": b["vectors"],
        "keys": b["keys"],
        "shards": scale.shards,
        "load_s": r["load_s"],
        "critical_ms": float(np.mean([t["critical_s"] for t in timed]) * 1e3),
        "critical_ms_max": float(np.max([t["critical_s"] for t in timed]) * 1e3),
        "assign_s": float(np.mean([t["assign_s"] for t in timed])),
        "recluster_s": float(np.mean([t["recluster_s"] for t in timed])),
        "bg_done_s": float(np.mean([t["bg_done_s"] for t in timed])),
        "stats_ms": float(np.mean([t["stats_s"] for t in timed]) * 1e3),
        "rss_mib_max": max(r["rss_steps"]) / 2**20,
        "rss_mib_idle": max(r["rss_empty"]) / 2**20,
        "rss_total": sum(r["rss_steps"]),
        "bytes_per_vector_rss": sum(r["rss_steps"]) / vectors,
        "bytes_per_vector_arrays": r["bytes_per_vector_arrays"],
        "snapshot_s": r["snapshot_s"],
        "snapshot_call_mb": r["snapshot_call_bytes"] / 1e6,
        "snapshot_gb": r["snapshot_bytes"] / 1e9,
        "snapshot_write_s": r["after_snapshot"]["base_write_s"],
        "after_snapshot_critical_ms": r["after_snapshot"]["critical_s"] * 1e3,
        "after_snapshot_latency_max_ms": r["after_snapshot"]["latency_max_ms"],
        "restore_s": s["restore_s"],
        "restored_vectors": s["restored_vectors"],
        "snapshot_vectors": s["snapshot_vectors"],
        "recover_s": r["killed"]["recover_s"],
        "replayed_groups": r["replayed_groups"],
        "killed_critical_ms": r["killed"]["critical_s"] * 1e3,
        "identical_after_restore": s["identical_after_restore"],
        "identical_after_replay": s["identical_after_replay"],
    }


COLUMNS = [
    ("size", "size", "{}"),
    ("vectors", "stored vectors", "{:,}"),
    ("load_s", "bulk load s", "{:.1f}"),
    ("critical_ms", "critical path ms", "{:.1f}"),
    ("assign_s", "assignments s/step", "{:.2f}"),
    ("recluster_s", "re-clustering s/step", "{:.2f}"),
    ("bg_done_s", "background done s", "{:.2f}"),
    ("rss_mib_idle", "RSS/shard idle MiB", "{:.0f}"),
    ("rss_mib_max", "RSS/shard MiB", "{:.0f}"),
    ("bytes_per_vector_rss", "B/vector (RSS)", "{:.0f}"),
    ("bytes_per_vector_arrays", "B/vector (arrays)", "{:.1f}"),
    ("snapshot_s", "snapshot: step waits s", "{:.2f}"),
    ("snapshot_call_mb", "written by the call MB", "{:.1f}"),
    ("snapshot_gb", "snapshot GB", "{:.2f}"),
    ("snapshot_write_s", "background write s", "{:.1f}"),
    ("after_snapshot_critical_ms", "next step's critical path ms", "{:.1f}"),
    ("restore_s", "restore s", "{:.1f}"),
    ("recover_s", "kill to recovered s", "{:.1f}"),
    ("replayed_groups", "groups replayed", "{}"),
    ("identical", "penalties identical", "{}"),
]


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |"]
    lines.append("| " + " | ".join("---" if k in ("size", "identical") else "---:" for k, _, _ in COLUMNS) + " |")
    for r in rows:
        r = dict(r, identical="yes" if r["identical_after_restore"] and r["identical_after_replay"] else "NO")
        lines.append("| " + " | ".join(fmt.format(r[k]) for k, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; returns the table's rows (also in `--workdir`/results.json)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4.1M,40M", help="stored vectors, comma-separated (4.1M, 40M, 250K, 2048)")
    ap.add_argument("--workdir", default="outputs/bench/memory_full_run", help="state and results; resumed")
    ap.add_argument("--prompts", type=int, default=25_000, help="prompts in the data set")
    ap.add_argument("--groups", type=int, default=512, help="prompt groups per step")
    ap.add_argument("--rollouts", type=int, default=16, help="rollouts per group")
    ap.add_argument("--dim", type=int, default=14, help="feature width (the default --meds.layers)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps before the snapshot (after a warm-up step)")
    ap.add_argument("--wal-steps", type=int, default=5, help="steps from the snapshot to the one with the kill")
    ap.add_argument("--snapshot-interval", type=int, default=10, help="--meds.snapshot_interval of the shards")
    ap.add_argument("--stream-seconds", type=float, default=5.0, help="spread a step's submits over this long")
    ap.add_argument("--build-procs", type=int, default=2, help="processes building the state")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    scale = Scale(args.prompts, args.groups, args.rollouts, args.dim, args.shards, args.seed)
    if args.snapshot_interval and args.wal_steps >= args.snapshot_interval:
        ap.error("--wal-steps must be below --snapshot-interval: the kill comes before the next recovery snapshot")

    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    rows = []
    for text in args.sizes.split(","):
        label, steps = parse_size(text, scale)
        wd = os.path.join(args.workdir, label)
        os.makedirs(wd, exist_ok=True)
        params = {**asdict(scale), "memory_steps": steps, "steps": args.steps, "wal_steps": args.wal_steps}
        params.update(snapshot_interval=args.snapshot_interval, stream_seconds=args.stream_seconds)
        ppath = os.path.join(wd, "params.json")
        if os.path.exists(ppath) and load_json(ppath) != params:
            sys.exit(f"{wd} holds a run with other parameters ({load_json(ppath)}): use another --workdir")
        save_json(ppath, params)
        progress(f"{label}: {steps} steps of {scale.per_step:,} vectors = {steps * scale.per_step:,} stored vectors")
        built = os.path.join(wd, "built")
        if not os.path.exists(os.path.join(built, "build.json")):
            progress(f"{label}: building the memory after {steps} steps ({args.build_procs} processes)")
            save_json(os.path.join(built, "build.json"), build(scale, steps, built, args.build_procs))
        b = load_json(os.path.join(built, "build.json"))
        progress(f"{label}: built state: {b['vectors']:,} vectors, {b['keys']:,} keys (built in {b['build_s']:.0f} s)")
        if not os.path.exists(os.path.join(wd, "run.json")):
            progress(f"{label}: cluster 1: load, {args.steps} timed steps, snapshot, {args.wal_steps} steps, kill")
            if os.path.exists(os.path.join(wd, "restore.json")):
                os.unlink(os.path.join(wd, "restore.json"))  # it compares with this phase's penalties
            save_json(os.path.join(wd, "run.json"), run_phase(scale, args, steps, built, wd))
        if not os.path.exists(os.path.join(wd, "restore.json")):
            progress(f"{label}: cluster 2: restore the snapshot into fresh shards, same steps")
            save_json(os.path.join(wd, "restore.json"), restore_phase(scale, args, steps, wd))
        for name in ("state-1", "state-2", "snapshot"):
            shutil.rmtree(os.path.join(wd, name), ignore_errors=True)
        rows.append(
            row(label, scale, b, load_json(os.path.join(wd, "run.json")), load_json(os.path.join(wd, "restore.json")))
        )
    save_json(os.path.join(args.workdir, "results.json"), rows)
    print()
    print(table(rows))
    if len(rows) > 1:  # what a stored vector costs, the shards' fixed cost left out
        a, b = min(rows, key=lambda r: r["vectors"]), max(rows, key=lambda r: r["vectors"])
        grow = (b["rss_total"] - a["rss_total"]) / max(b["vectors"] - a["vectors"], 1)
        print(f"\nthe shards' RSS grows by {grow:.1f} bytes per stored vector from {a['size']} to {b['size']}")
    return rows


if __name__ == "__main__":
    main()
