"""Penalties, shaped rewards and GRPO group-normalised advantages (spec §3 steps 5-6)."""

from __future__ import annotations

import numpy as np


def penalties(cluster_sizes, alpha: float, beta: float) -> np.ndarray:
    """pen = min(alpha * ln(|C| + 1), beta), float64; |C| = 0 gives 0."""
    sizes = np.asarray(cluster_sizes, dtype=np.float64)
    if (sizes < 0).any():
        raise ValueError("cluster sizes must be >= 0")
    return np.minimum(alpha * np.log(sizes + 1.0), beta)


def shape_rewards(rewards, correct, penalties) -> np.ndarray:
    """Shaped rewards: wrong rollouts r - pen, correct ones r / (1 + pen) (sign-preserving).

    `correct` is the verifier's raw verdict (score >= 0.5), never a shaped value.
    """
    r = np.asarray(rewards, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    p = np.asarray(penalties, dtype=np.float64)
    if not (r.shape == c.shape == p.shape):
        raise ValueError(f"shape mismatch: rewards {r.shape}, correct {c.shape}, penalties {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("penalties must be finite and >= 0")
    return np.where(c, r / (1.0 + p), r - p)


def group_advantages(rewards, group_size: int, eps: float = 1e-6) -> np.ndarray:
    """GRPO advantages: (r - mean) / (std + eps) within consecutive groups of `group_size`
    (unbiased std, as torch.std in veRL's and OpenRLHF's GRPO)."""
    r = np.asarray(rewards, dtype=np.float64)
    if group_size < 1 or r.size % group_size:
        raise ValueError(f"{r.size} rewards do not split into groups of {group_size}")
    g = r.reshape(-1, group_size)
    std = g.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else np.zeros((len(g), 1))
    return ((g - g.mean(axis=1, keepdims=True)) / (std + eps)).reshape(r.shape)


def filter_keeps(scores, shaped_rewards, metric: str = "raw", filter_range=(0.0, 1.0)) -> bool:
    """Whether DAPO dynamic filtering keeps one prompt group (`--meds.filter_metric`).

    raw (the official run, filter_groups.metric=acc): OpenRLHF's rule on the verifier's scores,
    `low < mean(scores) < high` with `filter_range = (low, high)`; with binary scores and the
    range (0, 1) it drops exactly the all-right and all-wrong groups. shaped (the official
    code's filter_groups.metric=seq_final_reward): the group is kept when its shaped rewards
    are not all equal (their std > 0); the range is not used. A group whose rewards are all
    equal gets zero advantages under group normalisation, so the shaped rule drops only groups
    that would not train, and keeps an all-wrong group whose rollouts MEDS penalizes differently.
    """
    if metric == "raw":
        low, high = filter_range
        scores = [float(s) for s in scores]
        return low < sum(scores) / len(scores) < high  # summed as SamplesGenerator._generate_vllm does
    if metric == "shaped":
        return bool(np.ptp(np.asarray(shaped_rewards, dtype=np.float64)) > 0)
    raise ValueError(f"--meds.filter_metric: must be one of raw|shaped, got {metric!r}")
