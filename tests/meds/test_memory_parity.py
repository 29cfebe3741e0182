"""ErrorMemory reproduces the reference MEDS step exactly (spec §3).

`ReferenceMemory` (openrlhf_meds/meds/reference.py) is written the obvious way, as the
official code does it: float64 lists, one sklearn NearestNeighbors fit per rollout, hdbscan
on each key's whole memory after every step. ErrorMemory must give identical cluster sizes
and penalties.
"""

import zlib

import numpy as np
import pytest

from openrlhf_meds.meds import ErrorMemory, MedsConfig
from openrlhf_meds.meds.reference import ReferenceMemory


def make_step(rng, prompts, rollouts, dim, centers, regime):
    """One step of synthetic features: clustered modes, duplicates, missing features."""
    keys, feats, correct = [], [], []
    for p in prompts:
        for _ in range(rollouts):
            keys.append(p)
            ok = rng.random() < 0.4
            correct.append(ok)
            if regime == "random":
                f = rng.normal(size=dim)
            else:
                c = centers[p][rng.integers(len(centers[p]))]
                f = c + rng.normal(size=dim) * (0.05 if regime == "tight" else 0.6)
            r = rng.random()
            if r < 0.08:
                f = np.full(dim, np.nan)  # no \boxed{} answer
            elif r < 0.2 and feats:
                f = feats[int(rng.integers(len(feats)))].copy()  # exact duplicate of a rollout
            feats.append(f)
    return keys, np.array(feats, dtype=np.float32), np.array(correct)


@pytest.mark.parametrize("regime", ["clustered", "tight", "random"])
@pytest.mark.parametrize("target", ["wrong", "both"])
def test_exact_clustering_matches_reference(regime, target):
    """Default clustering (exact MST) vs the reference with an exact spanning tree."""
    rng = np.random.default_rng(zlib.crc32(f"{regime}-{target}".encode()))
    dim, prompts = 14, [f"p{i}" for i in range(5)] + [7]  # str and int prompt keys
    centers = {p: rng.normal(size=(3, dim)) for p in prompts}
    ours = ErrorMemory(MedsConfig(target=target))
    ref = ReferenceMemory(target=target, approx_min_span_tree=False)
    penalized = 0
    for step in range(10):
        # some prompts skip steps; prompt 7 gets a single rollout (one-vector keys)
        active = [p for p in prompts if rng.random() < 0.8]
        keys, feats, correct = make_step(rng, active, 6, dim, centers, regime)
        keys += [7]
        feats = np.vstack([feats, rng.normal(size=(1, dim)).astype(np.float32)])
        correct = np.append(correct, False)
        order = rng.permutation(len(keys))  # arrival order within a step does not matter
        keys = [keys[i] for i in order]
        feats, correct = feats[order], correct[order]
        s_ref, p_ref = ref.step(keys, feats, correct)
        s_our, p_our = ours.step(keys, feats, correct)
        np.testing.assert_array_equal(s_our, s_ref, err_msg=f"step {step}")
        np.testing.assert_array_equal(p_our, p_ref, err_msg=f"step {step}")
        penalized += int((p_ref > 0).sum())
    assert penalized > 20, "the scenario must exercise penalties"


def test_vote_ties_between_clusters_use_reference_numbering():
    """Random features make many tiny clusters, so 3 neighbours in 3 clusters happen; the
    tie goes to the smallest *package* label, so our cluster numbers must be the package's
    (no duplicates here, so no fallback to the package either)."""
    rng = np.random.default_rng(3)
    ours = ErrorMemory(MedsConfig(target="both"))
    ref = ReferenceMemory(target="both", approx_min_span_tree=False)
    for _ in range(8):
        keys = ["a"] * 12 + ["b"] * 12
        feats = rng.normal(size=(24, 6)).astype(np.float32)
        correct = np.zeros(24, bool)
        s_ref, _ = ref.step(keys, feats, correct)
        s_our, _ = ours.step(keys, feats, correct)
        np.testing.assert_array_equal(s_our, s_ref)
    stats = ours.stats()
    assert stats["vote_ties"] > 0, "the scenario must contain numbering-dependent ties"
    assert stats.get("tie_fallbacks", 0) == 0


def test_hdbscan_clustering_matches_reference_bit_for_bit():
    """clustering=hdbscan calls the package exactly as the official code (approximate tree)."""
    rng = np.random.default_rng(11)
    dim, prompts = 14, ["x", "y", "z"]
    centers = {p: rng.normal(size=(4, dim)) for p in prompts}
    ours = ErrorMemory(MedsConfig(clustering="hdbscan"))
    ref = ReferenceMemory()
    for _ in range(6):
        keys, feats, correct = make_step(rng, prompts, 16, dim, centers, "clustered")
        s_ref, p_ref = ref.step(keys, feats, correct)
        s_our, p_our = ours.step(keys, feats, correct)
        np.testing.assert_array_equal(s_our, s_ref)
        np.testing.assert_array_equal(p_our, p_ref)
