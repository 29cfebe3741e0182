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
