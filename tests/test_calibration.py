import numpy as np
import pytest

from linewatch.runtime.calibration import ConformalCalibrator


def test_false_alarm_rate_is_at_most_target_on_exchangeable_data():
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        cal = ConformalCalibrator(0.05).fit(rng.normal(size=199))
        rates.append(cal.false_alarm_rate(rng.normal(size=2000)))
    # conformal guarantee: E[rate] <= alpha; with n = 199 it is close to alpha, not far below
    assert 0.035 < np.mean(rates) <= 0.05 + 0.004


def test_p_values_are_conformal_and_consistent_with_threshold():
    cal = ConformalCalibrator(0.1).fit(np.arange(1, 20, dtype=float))    # n = 19
    assert cal.threshold_ == 18.0                                         # k = ceil(20 * 0.9) = 18
    p = cal.p_values(np.array([0.0, 18.0, 18.5, 100.0]))
    np.testing.assert_allclose(p, [20 / 20, 3 / 20, 2 / 20, 1 / 20])
    assert list(cal.predict(np.array([18.0, 18.5]))) == [False, True]


def test_unreachable_target_is_reported():
    cal = ConformalCalibrator(0.01).fit(np.arange(10, dtype=float))
    assert not cal.target_reachable_ and cal.min_images_for_target_ == 99
    assert cal.threshold_ == 9.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        ConformalCalibrator(0.0)
    with pytest.raises(ValueError):
        ConformalCalibrator(0.1).fit(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        ConformalCalibrator(0.1).fit(np.array([]))
