"""`MemoryClient`: starts the MemoryActor shards and routes calls to them (`routing.py`).

The client is picklable: rollout workers hold one and submit their groups directly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import ray

from ..meds.config import MedsConfig
from .actor import TIMINGS, MemoryActor
from .routing import new_group_id, shard_of_group
from .wal import read_manifest, snapshot_files, write_manifest


def shard_nodes(num_shards: int, placement: str, num_cpus: float) -> list[str]:
    """The node id each shard asks for. "driver": this process's node for all; "spread":
    round-robin over the alive nodes with at least `num_cpus` CPUs, this node first."""
    here = ray.get_runtime_context().get_node_id()
    if placement == "driver":
        return [here] * num_shards
    alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= num_cpus]
    ids = sorted((n["NodeID"] for n in alive), key=lambda n: (n != here, n)) or [here]
    return [ids[i % len(ids)] for i in range(num_shards)]


class MemoryClient:
    """Routes groups to MemoryActor shards; picklable, so rollout workers can hold one."""

    def __init__(self, actors: list, num_shards: int, state_dir: str):
        self.actors, self.num_shards, self.state_dir = actors, num_shards, state_dir

    @classmethod
    def start(cls, config: MedsConfig, num_cpus: float = 1, name: str | None = None) -> MemoryClient:
        """Start `config.memory_shards` MemoryActors (CPU only) on the nodes that
        `config.memory_placement` picks (`shard_nodes`), restarted by Ray if their process dies."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        state_dir = config.memory_dir or tempfile.mkdtemp(prefix="openrlhf_meds_memory_")
        nodes = shard_nodes(config.memory_shards, config.memory_placement, num_cpus)
        actor_cls = ray.remote(MemoryActor)
        actors = [
            actor_cls.options(
                num_cpus=num_cpus,
                num_gpus=0,
                max_restarts=-1,
                max_task_retries=-1,
                name=f"{name}-{i}" if name else None,
                # soft: a restart after its node is gone runs elsewhere
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=True),
            ).remote(config.to_dict(), i, config.memory_shards, state_dir)
            for i, node in enumerate(nodes)
        ]
        return cls(actors, config.memory_shards, state_dir)

    def placement(self) -> list[dict]:
        """Where each shard runs: [{"shard", "node_id", "ip", "pid"}] (waits until they are up)."""
        return ray.get([a.node.remote() for a in self.actors])

    def new_group_id(self, prompt_key) -> int:
        """A fresh group id for `prompt_key`, routed to its shard."""
        return new_group_id(prompt_key, self.num_shards)

    def submit(self, prompt_key, step: int, features, correct, group_id: int | None = None, answers=None):
        """Send one group; returns (group id, ObjectRef of the acknowledgement). Await or
        ray.get the ref to see validation errors. `answers` (optional): the rollouts' final
        answers, str or None each, stored with their features (never change a penalty)."""
        gid = self.new_group_id(prompt_key) if group_id is None else int(group_id)
        actor = self.actors[shard_of_group(gid)]
        return gid, actor.submit.remote(gid, prompt_key, step, features, correct, answers)

    def fetch_refs(self, group_ids: Sequence[int], timeout: float | None = None) -> dict:
        """ObjectRefs per shard: {shard: (ref, positions)}; see `fetch`."""
        by_shard: dict[int, list[int]] = {}
        for pos, gid in enumerate(group_ids):
            by_shard.setdefault(shard_of_group(gid), []).append(pos)
        return {
            s: (self.actors[s].fetch.remote([int(group_ids[p]) for p in pos], timeout), pos)
            for s, pos in by_shard.items()
        }

    def fetch(self, group_ids: Sequence[int], timeout: float | None = 600.0) -> list:
        """(cluster sizes, penalties) of each group in order (None: lost in a crash)."""
        out: list = [None] * len(group_ids)
        for ref, positions in self.fetch_refs(group_ids, timeout).values():
            for p, result in zip(positions, ray.get(ref)):
                out[p] = result
        return out

    def flush(self, timeout: float | None = 600.0):
        """Wait (at most `timeout` s) until every shard's queued work is done."""
        ray.get([a.flush.remote() for a in self.actors], timeout=timeout)

    def stats(self, reset: bool = True) -> dict:
        """Statistics over all shards (sums, and means weighted as over one memory)."""
        shards = ray.get([a.stats.remote(reset) for a in self.actors])
        total = {k: sum(s.get(k, 0) for s in shards) for k in set().union(*shards) if k != "shard"}
        for k in [k for k in total if k.endswith("_max")]:
            total[k] = max(s.get(k, 0) for s in shards)
        clustered = total.get("clustered_keys", 0)
        total["clusters_per_key"] = (
            sum(s["clusters_per_key"] * s["clustered_keys"] for s in shards) / clustered if clustered else 0.0
        )
        cv = total.get("clustered_vectors", 0)
        total["noise_frac"] = sum(s["noise_frac"] * s["clustered_vectors"] for s in shards) / cv if cv else 0.0
        agreeing = total.get("cluster_answer_agreement_keys", 0)
        total["cluster_answer_agreement"] = (
            sum(s["cluster_answer_agreement"] * s["cluster_answer_agreement_keys"] for s in shards) / agreeing
            if agreeing
            else 0.0
        )
        total["bytes_per_vector"] = (
            sum(s["bytes_per_vector"] * s["vectors"] for s in shards) / total["vectors"] if total["vectors"] else 0.0
        )
        for base in TIMINGS:
            n = total.pop(f"{base}_n")
            total[f"{base}_mean"] = total[f"{base}_sum"] / n if n else 0.0
        rollouts = total.get("rollouts", 0)
        total["frac_penalized"] = total.get("penalized", 0) / rollouts if rollouts else 0.0
        total["no_feature_frac"] = total.get("rejected_no_feature", 0) / rollouts if rollouts else 0.0
        return total

    def snapshot(self, directory: str, step: int | None = None) -> str:
        """Save all shards under `directory` (a manifest, written last, makes it valid)."""
        os.makedirs(directory, exist_ok=True)
        names = snapshot_files(self.num_shards)
        infos = ray.get([a.snapshot.remote(os.path.join(directory, n)) for a, n in zip(self.actors, names)])
        write_manifest(directory, names, step, sum(i["vectors"] for i in infos))
        return directory

    def restore(self, directory: str):
        """Load a snapshot written by `snapshot` (any shard count) into the running shards."""
        manifest, files = read_manifest(directory)
        ray.get([a.restore.remote(files) for a in self.actors])
        return manifest

    def shutdown(self):
        """Kill all shards (no restart)."""
        for a in self.actors:
            ray.kill(a, no_restart=True)
