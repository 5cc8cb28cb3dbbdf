"""Student's t, the comparisons, sample sizes and variance components against scipy and textbooks."""
import numpy as np
import pytest
import scipy.stats

from fastvar.analysis import stats


@pytest.mark.parametrize("df", [1, 2.5, 7, 30, 300, 5000])
def test_student_t_matches_scipy(df):
    for t in (-40, -3, -0.5, 0, 1e-4, 0.1, 2.228, 12):
        assert stats.t_cdf(t, df) == pytest.approx(scipy.stats.t.cdf(t, df), abs=1e-12)
    for p in (0.001, 0.2, 0.5, 0.8, 0.975):
        assert stats.t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), abs=1e-8)


def test_textbook_values():
    assert stats.t_quantile(0.975, 10) == pytest.approx(2.228, abs=5e-4)  # every t table
    # Cohen (1988), two-sided alpha 0.05, power 0.8: 64 per group for d = 0.5, 26 for d = 0.8.
    assert stats.runs_per_arm(1.0, 0.5) == 64
    assert stats.runs_per_arm(1.0, 0.8) == 26
    assert stats.runs_per_arm(0.004, 0.002) == 64  # only the ratio of SD to difference matters
    assert stats.runs_per_arm(0.004, 0.001) > stats.runs_per_arm(0.004, 0.002)


def test_welch_and_paired_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 9), rng.normal(0.7, 2, 12)
    welch = stats.welch(a, b)
    expected = scipy.stats.ttest_ind(b, a, equal_var=False)
    assert welch.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert welch.df == pytest.approx(expected.df)
    assert welch.difference == pytest.approx(b.mean() - a.mean())
    low, high = expected.confidence_interval(0.95)
    assert (welch.low, welch.high) == pytest.approx((low, high))
    pair = stats.paired(a, b[:9])
    expected = scipy.stats.ttest_rel(b[:9], a)
    assert pair.p_value == pytest.approx(expected.pvalue, rel=1e-9) and pair.n == 9
    same = stats.paired(a, a + 0.01)  # a constant difference: certain
    assert same.p_value == 0 and same.low == same.high == pytest.approx(0.01)


def planted_grid(seed, sds=(2.0, 1.0, 1.5), shape=(16, 16)):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, sds[0], (shape[0], 1)) + rng.normal(0, sds[1], (1, shape[1]))
            + rng.normal(0, sds[2], shape) + 50)


def test_variance_components_recover_planted_ones():
    truth = (4.0, 1.0, 2.25)
    big = stats.variance_components(planted_grid(0, shape=(64, 64)))
    for component, true in zip(big, truth):
        assert component.low <= true <= component.high
        assert component.high - component.low < true  # informative at this size
    covered = np.zeros(3)
    for seed in range(40):
        covered += [c.low <= t <= c.high for c, t in zip(stats.variance_components(planted_grid(seed), seed=seed), truth)]
    assert (covered / 40 >= 0.85).all()  # nominal 95 %; the bootstrap is approximate at 16 levels
    assert [c.name for c in big] == ["init", "order", "rest"]
    assert stats.variance_components(planted_grid(3)) == stats.variance_components(planted_grid(3))


def test_a_factor_without_effect_gets_a_component_near_zero():
    rng = np.random.default_rng(5)
    grid = rng.normal(0, 1, (20, 1)) + rng.normal(0, 1, (20, 20))  # columns change nothing
    init, order, rest = stats.variance_components(grid)
    assert order.low <= 0 <= order.high or order.low < 0.05
    assert init.low > 0.2 and rest.low > 0.5
