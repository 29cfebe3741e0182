"""MemoryActor at paper scale: the critical path of a streamed step vs the reference step.

A step is P prompt groups x R rollouts (paper: 512 x 16) against a memory at the depth of
epoch e (see memory_step.py for the synthetic features). The groups are submitted to the
MemoryActor one by one over `--stream-seconds`, as vLLM engines would finish them; then:

- critical path: from the last group's submit (acknowledged) to all penalties fetched;
- work: the shard's compute for the step (assignments + background re-clustering), and
  how long after the last submit the background work was done (it must finish before the
  same keys come back: the next step's generation, and in the paper's setting the next
  epoch, since each prompt is drawn once per epoch);
- the reference-semantics step (ReferenceMemory, all on the critical path), timed in the
  same run on the same rollouts, and whether the penalties are identical.

    bash scripts/run.sh bench memory_actor                  # P=512, e=1,10,50,100
    bash scripts/run.sh bench memory_actor --prompts 64 --epochs 1,10 --stream-seconds 2
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import ray
from memory_step import depth_steps, reference_step, scale_parser  # benchmarks/ is the script's directory

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.meds.reference import ReferenceMemory
from openrlhf_meds.memory.client import MemoryClient
from openrlhf_meds.memory.wal import MANIFEST, SNAPSHOT_FORMAT, SNAPSHOT_VERSION


def save_as_snapshot(memory: ErrorMemory, directory: str):
    """Write `memory` as a one-shard MemoryClient snapshot (to start the actor at depth e)."""
    os.makedirs(directory, exist_ok=True)
    memory.save(os.path.join(directory, "shard-00000-of-00001.npz"))
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(
            {
                "format": SNAPSHOT_FORMAT,
                "version": SNAPSHOT_VERSION,
                "num_shards": 1,
                "files": ["shard-00000-of-00001.npz"],
                "step": None,
            },
            f,
        )


def main():
    ap = scale_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument(
        "--stream-seconds",
        type=float,
        default=10.0,
        help="spread the step's submits over this long (generation; minutes on GPUs)",
    )
    ap.add_argument("--no-reference", action="store_true", help="time the MemoryActor only")
    args = ap.parse_args()

    P, R, d = args.prompts, args.rollouts, args.dim

    ray.init(
        address="local", num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False
    )
    tmp = tempfile.mkdtemp(prefix="meds_bench_")
    cfg = MedsConfig(memory_shards=args.shards, memory_dir=os.path.join(tmp, "state"), snapshot_interval=0)
    client = MemoryClient.start(cfg, num_cpus=1)

    print(
        f"one step = {P} groups x {R} rollouts, d={d}, {args.shards} shard(s), submits over {args.stream_seconds:g} s"
    )
    header = (
        f"{'epoch':>5} {'vectors':>9} {'critical s':>11} {'ref step s':>11} {'ratio':>7} "
        f"{'work s':>7} {'bg done s':>10} {'identical':>10}"
    )
    print(header)
    print("-" * len(header))
    ref = None if args.no_reference else ReferenceMemory(approx_min_span_tree=False)
    for e, filler, step_keys, feats, correct in depth_steps(args, ref):
        save_as_snapshot(filler, os.path.join(tmp, f"depth-{e}"))
        client.restore(os.path.join(tmp, f"depth-{e}"))
        client.flush()  # labels of the restored memory: the previous steps' background work
        client.stats(reset=True)

        gap = args.stream_seconds / P
        t_start = time.perf_counter()
        gids, acks = [], []
        for g in range(P):
            rows = slice(g * R, (g + 1) * R)
            gid, ack = client.submit(step_keys[g * R], e, feats[rows], correct[rows])
            gids.append(gid)
            acks.append(ack)
            time.sleep(max(0.0, t_start + (g + 1) * gap - time.perf_counter()))
        ray.get(acks)
        t_last = time.perf_counter()
        results = client.fetch(gids)
        critical = time.perf_counter() - t_last
        client.flush()
        bg_done = time.perf_counter() - t_last
        stats = client.stats(reset=True)
        work = (stats["assign_ms_sum"] + stats["recluster_ms_sum"]) / 1e3
        pens = np.concatenate([r[1] for r in results])
        if ref is not None:
            t_ref, same = reference_step(ref, step_keys, feats, correct, pens)
            print(
                f"{e:>5} {stats['vectors']:>9} {critical:>11.3f} {t_ref:>11.2f} {t_ref / critical:>6.0f}x "
                f"{work:>7.2f} {bg_done:>10.2f} {same:>10}"
            )
        else:
            print(
                f"{e:>5} {stats['vectors']:>9} {critical:>11.3f} {'-':>11} {'-':>7} "
                f"{work:>7.2f} {bg_done:>10.2f} {'-':>10}"
            )
    print(
        f"\nlast step: mean assignment latency {stats['assign_latency_ms_mean']:.1f} ms (max "
        f"{stats['assign_latency_ms_max']:.1f}), {(pens > 0).mean():.2f} of its rollouts penalized"
    )
    client.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
