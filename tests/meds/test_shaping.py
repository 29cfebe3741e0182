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
