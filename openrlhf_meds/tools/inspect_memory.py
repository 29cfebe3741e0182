"""Look inside a saved MEDS error memory: what its clusters are, how big, which answers.

    python -m openrlhf_meds.tools.inspect_memory SNAPSHOT [--key K | --top 10] --out DIR

SNAPSHOT is a file written by `ErrorMemory.save`, or a MemoryActor training snapshot
directory (`manifest.json` plus one file per shard, as `MemoryClient.snapshot` writes it;
train_grpo's are `<ckpt>/meds_memory/global_stepN/`), read without Ray. Keys whose
re-clustering was still pending when the snapshot was taken are clustered first (as the
memory would before their next assignment).

Writes to DIR, and prints, `summary.txt`: keys, vectors, clusters per key, and the largest
error clusters (keys of wrong rollouts) with their sizes and dominant final answers; and
the PNGs `pca_<i>_<key>.png` (each selected key's stored features, 2-D PCA, coloured by
cluster), `layer_profile.png` (the mean per-layer logit of the largest error clusters) and
`cluster_sizes.png` (histogram of cluster sizes). Selected keys: `--key K` (both verdicts of
prompt key K), else the `--top` keys with the largest clusters, error keys first.
A missing path, a corrupt file or a directory without a valid manifest: one line on stderr
and exit code 2. docs/diversity.md describes each figure.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from openrlhf_meds.meds.memory import UNKNOWN_ANSWER, ErrorMemory

# Markers for answers that are not strings, in the summary and the figures.
NO_ANSWER_TEXT = "<no answer>"
UNKNOWN_TEXT = "<unknown>"
# Largest error clusters shown in layer_profile.png (columns).
PROFILE_CLUSTERS = 20


@dataclass
class Cluster:
    """One cluster of one key: its size and dominant answer (share of its known answers)."""

    key: tuple
    label: int
    size: int
    answer: str  # the most common answer, or a marker
    share: float  # of the cluster's vectors with a known answer; NaN when none is known


def load_memory(path: str) -> tuple[ErrorMemory, str]:
    """The memory saved at `path` (an `ErrorMemory.save` file or a training snapshot
    directory, its shards merged into one memory) and a one-line description of the source.
    FileNotFoundError / ValueError with the reason when it cannot be read."""
    from openrlhf_meds.memory.wal import read_manifest  # no Ray: wal.py is plain files

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    if not os.path.isdir(path):
        return _load_file(path), f"ErrorMemory file {path}"
    manifest, files = read_manifest(path)
    memory = None
    for f in files:
        part = _load_file(f)
        if memory is None:
            memory = ErrorMemory(part.config)
        memory.absorb(part)
    return memory, f"MemoryActor snapshot {path}: {len(files)} shard(s), step {manifest.get('step')}"


def _load_file(path: str) -> ErrorMemory:
    try:
        return ErrorMemory.load(path)
    except (KeyError, TypeError) as e:  # a readable file whose header lacks or mistypes the config
        raise ValueError(f"corrupt MEDS memory checkpoint {path}: {e!r}") from e


def _answer_text(memory: ErrorMemory, answer_id: int) -> str:
    if answer_id == UNKNOWN_ANSWER:
        return UNKNOWN_TEXT
    answer = memory.answer_of(int(answer_id))
    return NO_ANSWER_TEXT if answer is None else answer


def key_clusters(memory: ErrorMemory, key: tuple) -> list[Cluster]:
    """The clusters (noise excluded) of a clustered key, largest first (ties: smaller label)."""
    mem = memory.keys[key]
    out = []
    for label in np.unique(mem.labels[mem.labels >= 0]):
        ids = mem.answers[mem.labels == label]
        known = ids[ids != UNKNOWN_ANSWER]
        if len(known):
            values, counts = np.unique(known, return_counts=True)
            texts = [_answer_text(memory, v) for v in values]
            # the most common answer; a tie goes to the alphabetically first
            best = min(range(len(values)), key=lambda i: (-counts[i], texts[i]))
            answer, share = texts[best], counts[best] / len(known)
        else:
            answer, share = UNKNOWN_TEXT, float("nan")
        out.append(Cluster(key, int(label), len(ids), answer, float(share)))
    return sorted(out, key=lambda c: (-c.size, c.label))


def _cluster_pending(memory: ErrorMemory, progress) -> int:
    pending = [k for k, m in memory.keys.items() if m.labels is None]
    last = time.monotonic()
    for i, key in enumerate(pending, 1):
        memory.recluster([key])
        if time.monotonic() - last > 5 or i == len(pending):
            progress(f"clustered {i}/{len(pending)} keys with pending re-clustering")
            last = time.monotonic()
    return len(pending)


def _key_text(key: tuple) -> str:
    return f"{key[0]} ({'correct' if key[1] else 'wrong'})"


def summarize(memory: ErrorMemory, source: str, clusters: dict, top: int, selected: list, key_arg) -> str:
    """The text of summary.txt."""
    keys = list(memory.keys)
    wrong = [k for k in keys if not k[1]]
    vectors = {k: len(memory.keys[k].vectors) for k in keys}
    labels = [memory.keys[k].labels for k in keys]
    n_vec = sum(vectors.values())
    known = sum(int((memory.keys[k].answers != UNKNOWN_ANSWER).sum()) for k in keys)
    per_key = np.array([len(clusters[k]) for k in keys])
    per_wrong = np.array([len(clusters[k]) for k in wrong])
    noise = sum(int((lab == -1).sum()) for lab in labels)
    st = memory.stats()
    cfg = memory.config
    lines = [
        f"MEDS error memory: {source}",
        f"keys: {len(keys)} (error keys: {len(wrong)}, correct keys: {len(keys) - len(wrong)})",
        f"vectors: {n_vec} (in error keys: {sum(vectors[k] for k in wrong)})",
        f"feature: {memory.dim or 0} dims (--meds.layers {cfg.layers}, layer_diff {cfg.layer_diff})",
        f"answers known: {known} of {n_vec} vectors, {len(memory.answer_table)} distinct",
    ]

    def spread(a):
        return f"mean {a.mean():.2f}, median {np.median(a):g}, max {a.max()}" if len(a) else "none"

    lines += [
        f"clusters per key: {spread(per_key)}",
        f"clusters per error key: {spread(per_wrong)}",
        f"noise: {noise} of {n_vec} vectors ({noise / n_vec:.1%})" if n_vec else "noise: 0 of 0 vectors",
        f"cluster_answer_agreement: {st['cluster_answer_agreement']:.3f} "
        f"(adjusted Rand index, mean over {st['cluster_answer_agreement_keys']} keys)",
        "",
    ]
    ranked = sorted((c for k in wrong for c in clusters[k]), key=lambda c: (-c.size, str(c.key[0]), c.label))
    lines.append(f"largest error clusters (top {min(top, len(ranked))} of {len(ranked)}):")
    lines += _cluster_table(ranked[:top])
    if key_arg is not None:
        for key in selected:
            lines += ["", f"clusters of key {_key_text(key)}: {vectors[key]} vectors"]
            lines += _cluster_table(clusters[key])
    return "\n".join(lines) + "\n"


def _cluster_table(rows: list[Cluster]) -> list[str]:
    if not rows:
        return ["  (none)"]
    out = [f"  {'rank':>4}  {'size':>6}  {'share':>6}  {'cluster':>7}  key / dominant answer"]
    for i, c in enumerate(rows, 1):
        share = "-" if np.isnan(c.share) else f"{c.share:.0%}"
        out.append(f"  {i:>4}  {c.size:>6}  {share:>6}  {c.label:>7}  {c.key[0]} / {c.answer}")
    return out


def _pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA coordinates of the rows of x (numpy SVD) and the two components' variance shares."""
    c = x - x.mean(axis=0)
    coords = np.zeros((len(x), 2))
    share = np.zeros(2)
    if len(x) >= 2:
        u, s, _ = np.linalg.svd(c, full_matrices=False)
        m = min(2, len(s))
        coords[:, :m] = u[:, :m] * s[:m]
        total = (s**2).sum()
        if total > 0:
            share[:m] = s[:m] ** 2 / total
    return coords, share


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:48]


def plot_key(memory: ErrorMemory, key: tuple, clusters: list[Cluster], path: str):
    """pca_*.png: the key's stored features, L2-normalised as HDBSCAN sees them, on their
    first two principal axes; one colour per cluster, noise as grey crosses."""
    import matplotlib.pyplot as plt

    from openrlhf_meds.meds.clustering import normalize_rows

    mem = memory.keys[key]
    coords, share = _pca2(normalize_rows(mem.vectors).astype(np.float64))
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    noise = mem.labels == -1
    if noise.any():
        ax.scatter(*coords[noise].T, c="0.6", marker="x", s=18, label=f"noise ({int(noise.sum())})")
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(clusters):
        rows = mem.labels == c.label
        label = f"#{c.label} ({c.size}): {c.answer[:20]}" if i < 12 else None
        ax.scatter(*coords[rows].T, color=cmap(i % 20), s=18, label=label)
    ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({share[1]:.0%} of variance)")
    ax.set_title(f"{_key_text(key)}: {len(mem.vectors)} vectors, {len(clusters)} clusters", fontsize=9)
    if len(mem.vectors):
        ax.legend(fontsize=7, loc="best", title="cluster (size): dominant answer", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layer_profile(memory: ErrorMemory, ranked: list[Cluster], path: str):
    """layer_profile.png: per feature dimension (a layer's logit of y*, last layer at the
    bottom) x the largest error clusters, the mean of the cluster's stored features."""
    import matplotlib.pyplot as plt

    d = memory.dim or 0
    cols = ranked[:PROFILE_CLUSTERS]
    grid = np.array([memory.keys[c.key].vectors[memory.keys[c.key].labels == c.label].mean(axis=0) for c in cols]).T
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(cols) + 2.5), max(3.0, 0.3 * d + 1.8)))
    if len(cols) and d:
        image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="mean logit of y*" + (" difference" if memory.config.layer_diff else ""))
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([f"{str(c.key[0])[:8]}#{c.label} ({c.size})" for c in cols], rotation=70, fontsize=6)
        ax.set_yticks(range(d))
        ax.set_yticklabels(["L" if j == d - 1 else f"L-{d - 1 - j}" for j in range(d)], fontsize=7)
        ax.set_ylabel("layer (L: the last)")
    else:
        ax.text(0.5, 0.5, "no error clusters", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"mean per-layer profile of the {len(cols)} largest error clusters", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cluster_sizes(clusters: dict, path: str):
    """cluster_sizes.png: how many clusters have each size, error keys and correct keys."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    wrong = [c.size for k, cs in clusters.items() if not k[1] for c in cs]
    right = [c.size for k, cs in clusters.items() if k[1] for c in cs]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sizes = wrong + right
    if sizes:
        bins = np.unique(np.geomspace(2, max(sizes) + 1, 30).astype(int))
        bins = bins if len(bins) > 1 else np.array([2, 3])
        ax.hist([wrong, right], bins=bins, stacked=True, label=["error keys", "correct keys"])
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain if max(sizes) < 40 else NullFormatter())
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no clusters", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("cluster size (stored vectors)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{len(sizes)} clusters ({len(wrong)} in error keys)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _select(memory: ErrorMemory, clusters: dict, key_arg: str | None, top: int) -> list[tuple]:
    if key_arg is not None:
        chosen = [k for k in memory.keys if str(k[0]) == key_arg]
        if not chosen:
            raise ValueError(f"prompt key {key_arg!r} is not in the memory")
        return sorted(chosen, key=lambda k: k[1])
    largest = {k: max((c.size for c in cs), default=0) for k, cs in clusters.items()}
    ranked = sorted(memory.keys, key=lambda k: (k[1], -largest[k], -len(memory.keys[k].vectors), str(k[0])))
    return ranked[:top]


def inspect(memory: ErrorMemory, source: str, out: str, key: str | None = None, top: int = 10, progress=print) -> str:
    """Write summary.txt and the PNGs for `memory` (from `load_memory`) into `out`; return
    the summary. Clusters the keys whose re-clustering is pending (changes `memory`).
    ValueError if `key` is given and not a prompt key of the memory."""
    import matplotlib

    matplotlib.use("Agg")
    _cluster_pending(memory, progress)
    clusters = {k: key_clusters(memory, k) for k in memory.keys}
    selected = _select(memory, clusters, key, top)
    os.makedirs(out, exist_ok=True)
    text = summarize(memory, source, clusters, top, selected, key)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text)
    for i, k in enumerate(selected, 1):
        name = f"pca_{i:02d}_{_safe(str(k[0]))}_{'correct' if k[1] else 'wrong'}.png"
        plot_key(memory, k, clusters[k], os.path.join(out, name))
        progress(f"wrote {name} ({i}/{len(selected)})")
    ranked = sorted(
        (c for k in (selected if key is not None else memory.keys) if not k[1] for c in clusters[k]),
        key=lambda c: (-c.size, str(c.key[0]), c.label),
    )
    plot_layer_profile(memory, ranked, os.path.join(out, "layer_profile.png"))
    plot_cluster_sizes(clusters, os.path.join(out, "cluster_sizes.png"))
    progress(f"wrote summary.txt, layer_profile.png, cluster_sizes.png to {out}")
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (2 for an unreadable snapshot)."""
    parser = argparse.ArgumentParser(
        prog="python -m openrlhf_meds.tools.inspect_memory",
        description="Summary and figures of a saved MEDS error memory (ErrorMemory.save file or snapshot directory).",
    )
    parser.add_argument("snapshot", help="an ErrorMemory.save file, or a snapshot directory with manifest.json")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--key", help="show this prompt key (both verdicts) instead of the top keys")
    which.add_argument("--top", type=int, default=10, help="number of keys mapped and of clusters listed (10)")
    parser.add_argument("--out", required=True, help="output directory for summary.txt and the PNGs")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be >= 1")

    def progress(message):
        print(f"inspect_memory: {message}", file=sys.stderr, flush=True)

    try:
        memory, source = load_memory(args.snapshot)
        progress(f"loaded {source}: {len(memory.keys)} keys")
        text = inspect(memory, source, args.out, key=args.key, top=args.top, progress=progress)
    except (OSError, ValueError) as e:
        # One line, no traceback: a wrong path, a damaged file or an unknown key is a usage
        # problem, not a bug to debug.
        print(f"inspect_memory: error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
