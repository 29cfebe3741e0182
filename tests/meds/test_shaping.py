import numpy as np
import pytest

from openrlhf_meds.meds import group_advantages, penalties, shape_rewards


def test_penalty_formula_and_cap():
    p = penalties([0, 1, 3, 100], alpha=0.1, beta=0.2)
    np.testing.assert_allclose(p, [0.0, 0.1 * np.log(2), 0.1 * np.log(4), 0.2])
    assert penalties([5], alpha=0.0, beta=0.2)[0] == 0.0
    with pytest.raises(ValueError):
        penalties([-1], 0.1, 0.2)


def test_shaping_is_sign_preserving_for_correct_rollouts():
    r = shape_rewards([1.0, 0.0, -1.0, 1.0], [True, False, False, True], [0.2, 0.2, 0.1, 0.0])
    np.testing.assert_allclose(r, [1.0 / 1.2, -0.2, -1.1, 1.0])
    with pytest.raises(ValueError, match="shape mismatch"):
        shape_rewards([1.0], [True, False], [0.0])
    with pytest.raises(ValueError, match="finite"):
        shape_rewards([1.0], [True], [np.nan])


def test_group_advantages():
    a = group_advantages([1.0, 0.0, 0.0, 0.0, 1.0, 1.0], group_size=3)
    g = np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(a[:3], (g - g.mean()) / (g.std(ddof=1) + 1e-6))
    np.testing.assert_allclose(a[3:], (np.array([0, 1, 1]) - 2 / 3) / (np.std([0, 1, 1], ddof=1) + 1e-6))
    np.testing.assert_allclose(group_advantages([1.0, 1.0], 2), [0.0, 0.0])  # no signal
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages([1.0, 2.0, 3.0], 4)


def test_the_shaped_filter_keeps_an_all_wrong_group_that_meds_tells_apart():
    """--meds.filter_metric: with real ErrorMemory penalties, an all-wrong group whose rollouts
    fall into clusters of different sizes has shaped rewards that differ: the shaped filter
    keeps it, the raw-score filter (the official run) drops it."""
    from openrlhf_meds.meds import ErrorMemory, MedsConfig, filter_keeps

    rng = np.random.default_rng(0)
    common, rare = rng.normal(size=8), rng.normal(size=8)
    memory = ErrorMemory(MedsConfig(alpha=0.1))
    wrong = np.zeros(8, bool)

    def group(n_common):  # 8 wrong rollouts: n_common of the common error, the rest rare
        modes = np.vstack([np.tile(common, (n_common, 1)), np.tile(rare, (8 - n_common, 1))])
        return modes + rng.normal(scale=0.01, size=(8, 8))

    # Step 0: the memory is empty, every penalty is 0: the shaped rewards are all equal.
    _, pens = memory.step(["p"] * 8, group(6), wrong)
    assert (pens == 0).all()
    scores = np.zeros(8)
    shaped = shape_rewards(scores, wrong, pens)
    assert not filter_keeps(scores, shaped, "shaped") and not filter_keeps(scores, shaped, "raw")
    # Step 1: the common error's cluster holds 6 past rollouts, the rare one's 2.
    sizes, pens = memory.step(["p"] * 8, group(5), wrong)
    assert sorted(set(sizes.tolist())) == [2, 6]
    shaped = shape_rewards(scores, wrong, pens)
    assert np.ptp(shaped) > 0
    assert filter_keeps(scores, shaped, "shaped")
    assert not filter_keeps(scores, shaped, "raw", (0.0, 1.0))
    # The group's advantages are non-zero only where it is kept.
    assert np.abs(group_advantages(shaped, 8, eps=1e-9)).max() > 0.5
    # All right, target wrong: no penalty, all equal, dropped by both; a mixed group kept by both.
    right = np.ones(8, bool)
    assert not filter_keeps(np.ones(8), shape_rewards(np.ones(8), right, np.zeros(8)), "shaped")
    assert not filter_keeps(np.ones(8), np.ones(8), "raw")
    mixed = np.r_[1.0, np.zeros(7)]
    assert filter_keeps(mixed, shape_rewards(mixed, mixed >= 0.5, np.zeros(8)), "shaped")
    assert filter_keeps(mixed, mixed, "raw") and not filter_keeps(mixed, mixed, "raw", (0.2, 1.0))
    with pytest.raises(ValueError, match="--meds.filter_metric"):
        filter_keeps(mixed, mixed, "acc")
