"""Time one MEDS memory step: ErrorMemory vs the reference implementation, same run.

A step is P prompts x R rollouts (paper: 512 x 16) of d-dim features (d = 14 layers),
against a memory filled to the depth of epoch e (every prompt seen e times before, so a
prompt's two keys hold e x R vectors together). Features are synthetic: per prompt a few
"error modes" plus noise (optionally some bitwise repeats); accuracy varies per prompt.

    bash scripts/run.sh bench memory_step                       # P=512, e=1,10,50,100
    bash scripts/run.sh bench memory_step --prompts 64 --epochs 1,10
    bash scripts/run.sh bench memory_step --epochs 50 --repeat-frac 0.5   # half the features repeated

Prints per-step seconds for both, the speed ratio, whether the penalties are identical,
the bytes ErrorMemory holds per stored vector (arrays with their headers, per-key records
and the key dict; measured after the step), and for the timed step: the kNN votes whose
tie between clusters depends on cluster numbers, the keys whose numbering was replayed
from the hdbscan package's KD-tree query, and the keys clustered by the package itself.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.meds.clustering import normalize_rows, package_numbering, recluster
from openrlhf_meds.meds.reference import ReferenceMemory


def rollouts(rng, prompts, modes, accuracy, r, dim, repeat_frac):
    """Features and verdicts for r rollouts of each prompt."""
    p = np.repeat(np.arange(prompts), r)
    correct = rng.random(len(p)) < accuracy[p]
    which = rng.integers(0, modes.shape[1], len(p))
    # correct and wrong answers use different modes (offset by half the modes)
    feats = modes[p, (which + correct * (modes.shape[1] // 2)) % modes.shape[1]]
    feats = feats + rng.normal(scale=0.3, size=feats.shape)
    repeat = rng.random(len(p)) < repeat_frac  # identical rollouts repeat a feature exactly
    feats[repeat] = feats[np.maximum(np.nonzero(repeat)[0] - 1, 0)]
    return p, feats.astype(np.float32), correct


def held_bytes(memory: ErrorMemory) -> int:
    """Bytes of the memory's own objects: arrays with their headers, per-key records and
    the key dict (what stays resident per stored vector)."""
    total = sys.getsizeof(memory.keys)
    for key, m in memory.keys.items():
        total += sys.getsizeof(key) + sys.getsizeof(key[0]) + sys.getsizeof(m)
        total += sum(sys.getsizeof(a) for a in (m.vectors, m.labels, m.mst) if a is not None)
    return total


def warm_up(dim: int):
    """Load, untimed, the compiled kernels and imports that only ties among bitwise-identical
    rows use (a trainer's long-lived memory has them loaded after its first such key)."""
    xn = normalize_rows(np.repeat(np.random.default_rng(0).normal(size=(4, dim)), 2, axis=0))
    parent, labels = recluster(xn)
    package_numbering(xn, labels, labels[None, :3], parent)
    recluster(normalize_rows(np.ones((8, dim))))  # 8 copies of one row: the replay path


def scale_parser(description: str) -> argparse.ArgumentParser:
    """The step's scale and memory depths (shared with memory_actor.py)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--dim", type=int, default=14)
    ap.add_argument("--epochs", default="1,10,50,100", help="memory depths to time, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def reference_step(ref: ReferenceMemory, keys, feats, correct, penalties) -> tuple[float, str]:
    """The reference's step on the same rollouts: (its seconds, "yes" when its penalties equal
    `penalties` exactly, else how many differ)."""
    t0 = time.perf_counter()
    _, pen_ref = ref.step(keys, feats, correct)
    t_ref = time.perf_counter() - t0
    differ = int((penalties != pen_ref).sum())
    return t_ref, "yes" if differ == 0 else f"{differ} differ"


def depth_steps(args, ref: ReferenceMemory | None = None, repeat_frac: float = 0.0):
    """For each memory depth e of `--epochs`: fill an appending ErrorMemory (and `ref`, if
    given, clustered) to e epochs, untimed, and yield (e, filler, step_keys, feats, correct):
    the step to time. That step is then appended, so the next depth continues after it.
    (Shared with memory_actor.py.)"""
    rng = np.random.default_rng(args.seed)
    P, R, d = args.prompts, args.rollouts, args.dim
    modes = rng.normal(size=(P, 8, d)) * 2.0
    accuracy = rng.uniform(0, 1, P)
    keys = [f"prompt-{i}" for i in range(P)]
    filler = ErrorMemory(MedsConfig(target="none"))  # appends without computing sizes
    filled = 0
    for e in sorted(int(e) for e in args.epochs.split(",")):
        while filled < e:
            p, feats, correct = rollouts(rng, P, modes, accuracy, R, d, repeat_frac)
            filler.assign([keys[i] for i in p], feats, correct)
            if ref is not None:
                for j in range(len(p)):
                    ref.vectors.setdefault((keys[p[j]], bool(correct[j])), []).append(
                        feats[j].astype(np.float64).tolist()
                    )
            filled += 1
        if ref is not None:
            for key in ref.vectors:
                ref._cluster(key)
        p, feats, correct = rollouts(rng, P, modes, accuracy, R, d, repeat_frac)
        step_keys = [keys[i] for i in p]
        yield e, filler, step_keys, feats, correct
        filler.assign(step_keys, feats, correct)
        filled += 1


def main():
    ap = scale_parser(__doc__.split("\n\n")[0])
    ap.add_argument(
        "--reference-tree",
        choices=["exact", "approx"],
        default="exact",
        help="spanning tree of the reference's hdbscan call: exact (what ErrorMemory computes, "
        "so penalties must be identical) or approx (the package default of the official code; "
        "~5-25%% faster, occasionally a non-minimal tree, so a few penalties may differ)",
    )
    ap.add_argument(
        "--repeat-frac",
        default="0",
        help="fractions of rollouts whose feature exactly repeats the previous one, comma-separated "
        "(bitwise duplicates; their vote ties can need the hdbscan package's numbering, "
        "docs/algorithm.md); each fraction fills its own memories from the same seed",
    )
    ap.add_argument("--no-reference", action="store_true", help="time ErrorMemory only")
    args = ap.parse_args()

    P, R, d = args.prompts, args.rollouts, args.dim
    cfg = MedsConfig()

    print(f"one step = {P} prompts x {R} rollouts, d={d}; reference tree: {args.reference_tree}")
    columns = [("repeats", 7), ("epoch", 5), ("vectors", 10), ("ref s/step", 11), ("ours s/step", 12)]
    columns += [("ratio", 7), ("identical", 10), ("B/vector", 9)]
    tie_columns = [("vote ties", 9), ("replayed", 8), ("package", 7)]
    header = " ".join(f"{name:>{width}}" for name, width in [*columns, *tie_columns])
    print(header)
    print("-" * len(header))
    warm_up(d)

    for frac in (float(f) for f in args.repeat_frac.split(",")):
        # Fill both memories epoch by epoch (untimed), time one step at each requested depth.
        ref = None if args.no_reference else ReferenceMemory(approx_min_span_tree=args.reference_tree == "approx")
        for e, filler, step_keys, feats, correct in depth_steps(args, ref, frac):
            ours = ErrorMemory(cfg)
            ours.load_state_dict(filler.state_dict())
            ours.recluster()  # the labels the memory has at the start of this step
            vectors = ours.stats()["vectors"]
            before = ours.counters.copy()
            t0 = time.perf_counter()
            _, pen_ours = ours.step(step_keys, feats, correct)
            t_ours = time.perf_counter() - t0
            bpv = held_bytes(ours) / max(ours.stats()["vectors"], 1)
            counts = ours.counters - before  # this step's
            row = f"{frac:>7} {e:>5} {vectors:>10} "
            if ref is not None:
                t_ref, same = reference_step(ref, step_keys, feats, correct, pen_ours)
                row += f"{t_ref:>11.2f} {t_ours:>12.3f} {t_ref / t_ours:>6.0f}x {same:>10} "
            else:
                row += f"{'-':>11} {t_ours:>12.3f} {'-':>7} {'-':>10} "
            names = ("vote_ties", "tie_replays", "tie_fallbacks")
            row += f"{bpv:>9.1f} " + " ".join(f"{counts[k]:>{w}}" for k, (_, w) in zip(names, tie_columns))
            print(row)
        stats = ours.stats()
        print(
            f"  last step at repeats {frac}: {int((pen_ours > 0).sum())} of {len(pen_ours)} rollouts penalized, "
            f"{stats['clusters_per_key']:.1f} clusters per clustered key, noise fraction {stats['noise_frac']:.2f}"
        )


if __name__ == "__main__":
    main()
