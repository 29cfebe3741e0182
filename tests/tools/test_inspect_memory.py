"""`python -m openrlhf_meds.tools.inspect_memory` on a real ErrorMemory (HDBSCAN clusters of
features around a few modes, with final answers), saved as one file and as a sharded
snapshot directory; its summary's numbers against the memory itself; clear errors."""

import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.memory.routing import shard_of
from openrlhf_meds.memory.wal import snapshot_files, write_manifest
from openrlhf_meds.tools.inspect_memory import main

D = 14


def build_memory() -> ErrorMemory:
    """Three prompts, two steps of 24 rollouts each: wrong rollouts around three modes per
    prompt (mode m of prompt p mostly answers "p*10+m", one in six a neighbour, one in eight
    nothing), correct ones around a fourth mode answering "p"."""
    rng = np.random.default_rng(0)
    modes = rng.normal(size=(3, 4, D)) * 3
    mem = ErrorMemory(MedsConfig())
    for _ in range(2):
        keys, feats, correct, answers = [], [], [], []
        for p in range(3):
            m = rng.choice(4, 24, p=[0.5, 0.25, 0.1, 0.15])
            keys += [f"prompt-{p}"] * 24
            feats.append(modes[p, m] + rng.normal(size=(24, D)) * 0.05)
            correct.append(m == 3)
            for i, mi in enumerate(m):
                if mi == 3:
                    answers.append(str(p))
                elif i % 8 == 0:
                    answers.append(None)
                else:
                    answers.append(str(p * 10 + mi + (i % 6 == 0)))
        mem.step(keys, np.concatenate(feats).astype(np.float32), np.concatenate(correct), answers)
    return mem


def expected(path: str) -> dict:
    """What the memory saved at `path` holds, computed here: keys, vectors, and the largest
    cluster of a wrong-rollout key with its most common answer and that answer's share."""
    mem = ErrorMemory.load(path)
    mem.recluster()
    best = None
    for key, m in mem.keys.items():
        if key[1]:
            continue
        for label, size in enumerate(np.bincount(m.labels[m.labels >= 0])):
            if best is None or size > best[0]:
                answers = Counter(m.answers[m.labels == label].tolist()).most_common()
                top = [a for a, c in answers if c == answers[0][1]]
                text = sorted("<no answer>" if a == -2 else mem.answer_of(a) for a in top)[0]
                best = (int(size), key[0], label, text, answers[0][1] / size)
    return {
        "keys": len(mem.keys),
        "vectors": sum(len(m.vectors) for m in mem.keys.values()),
        "largest": best,
    }


def parse(summary: str) -> dict:
    keys = int(re.search(r"^keys: (\d+) ", summary, re.M).group(1))
    vectors = int(re.search(r"^vectors: (\d+) ", summary, re.M).group(1))
    table = summary.split("largest error clusters")[1]
    size, share, label, key, answer = re.search(r"^ +1 +(\d+) +(\S+) +(-?\d+)  (\S+) / (.*)$", table, re.M).groups()
    return {"keys": keys, "vectors": vectors, "largest": (int(size), key, int(label), answer, share)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("memory") / "memory.npz"
    build_memory().save(str(path))
    return str(path)


def test_summary_and_figures_of_a_saved_memory(saved, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([saved, "--top", "2", "--out", str(out)]) == 0
    summary = (out / "summary.txt").read_text()
    assert capsys.readouterr().out == summary  # printed too
    want, got = expected(saved), parse(summary)
    assert got["keys"] == want["keys"] == 6 and got["vectors"] == want["vectors"] == 144
    size, key, label, answer, share = want["largest"]
    assert got["largest"] == (size, key, label, answer, f"{share:.0%}")
    assert size >= 10 and answer != "<no answer>"  # a real cluster with a real dominant answer
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["cluster_sizes.png", "layer_profile.png", f"pca_01_{key}_wrong.png", pngs[3]]
    assert pngs[3].startswith("pca_02_") and pngs[3].endswith("_wrong.png")
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sharded_snapshot_directory_reads_as_one_memory(saved, tmp_path, capsys):
    whole = ErrorMemory.load(saved)
    snap = tmp_path / "global_step2"
    snap.mkdir()
    names = snapshot_files(2)
    for shard, name in enumerate(names):
        part = ErrorMemory(whole.config)
        part.absorb(ErrorMemory.load(saved), keep=lambda k, s=shard: shard_of(k, 2) == s)
        assert part.keys, "both shards hold keys"
        part.save(str(snap / name))
    write_manifest(str(snap), names, step=2, vectors=144)
    assert main([str(snap), "--key", "prompt-1", "--out", str(tmp_path / "out")]) == 0
    summary = capsys.readouterr().out
    assert "2 shard(s), step 2" in summary
    got, want = parse(summary), expected(saved)
    assert got["keys"] == want["keys"] and got["vectors"] == want["vectors"]
    assert got["largest"][:4] == want["largest"][:4]
    # --key: that prompt's two keys are mapped and its clusters listed
    assert sorted(p.name for p in (tmp_path / "out").glob("pca_*.png")) == [
        "pca_01_prompt-1_wrong.png",
        "pca_02_prompt-1_correct.png",
    ]
    assert "clusters of key prompt-1 (wrong)" in summary


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_unreadable_inputs_exit_2_with_one_line(saved, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main([str(tmp_path / "nope.npz"), "--out", out]) == 2
    assert one_line_error(capsys) == f"inspect_memory: error: no such file or directory: {tmp_path / 'nope.npz'}"
    corrupt = tmp_path / "corrupt.npz"
    data = open(saved, "rb").read()
    corrupt.write_bytes(data[: len(data) // 2])
    assert main([str(corrupt), "--out", out]) == 2
    assert one_line_error(capsys).startswith("inspect_memory: error: corrupt MEDS memory checkpoint")
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", out]) == 2
    assert "missing manifest.json" in one_line_error(capsys)
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    assert main([str(tmp_path / "empty"), "--out", out]) == 2
    assert "corrupt MEDS memory manifest" in one_line_error(capsys)
    assert main([saved, "--key", "no-such-prompt", "--out", out]) == 2
    assert one_line_error(capsys) == "inspect_memory: error: prompt key 'no-such-prompt' is not in the memory"


def test_the_tool_reads_snapshots_without_ray():
    code = "import sys, openrlhf_meds.tools.inspect_memory; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["False"]
