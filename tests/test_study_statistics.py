"""The study's statistics on known inputs: t intervals, paired differences, verdicts."""

import math

import pytest
from scipy import stats

from advss_tf.study import statistics


def test_interval_of_a_constant_has_zero_width():
    interval = statistics.t_interval([42.5, 42.5, 42.5, 42.5])
    assert interval.mean == 42.5 and interval.half_width == 0.0 and interval.sd == 0.0
    assert interval.low == interval.high == 42.5 and interval.n == 4


def test_interval_of_a_known_sample_is_the_textbook_t_interval():
    sample = [1.0, 2.0, 3.0, 4.0, 5.0]
    interval = statistics.t_interval(sample)
    # t_{0.975, 4} = 2.776 (any t table); sd = sqrt(2.5); half width = 2.776 * sqrt(2.5) / sqrt(5) = 1.963
    assert interval.mean == 3.0 and interval.sd == pytest.approx(math.sqrt(2.5))
    assert interval.half_width == pytest.approx(1.9632, abs=1e-4)
    low, high = stats.t.interval(0.95, 4, loc=3.0, scale=stats.sem(sample))
    assert (interval.low, interval.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    wider = statistics.t_interval(sample, confidence=0.99)
    assert wider.half_width > interval.half_width


def test_one_value_has_no_interval_and_none_is_an_error():
    one = statistics.t_interval([7.0])
    assert one.mean == 7.0 and one.half_width is None and one.contains_zero() is None
    with pytest.raises(ValueError, match="no values"):
        statistics.t_interval([])
    with pytest.raises(ValueError, match="confidence"):
        statistics.t_interval([1.0, 2.0], confidence=1.0)


def test_paired_differences_use_only_the_seeds_both_rows_have():
    a = {0: 50.0, 1: 52.0, 2: 49.0}
    b = {1: 50.0, 2: 49.5, 3: 10.0}
    assert statistics.paired_differences(a, b) == {1: 2.0, 2: -0.5}


def test_verdict_says_not_resolved_when_the_interval_contains_zero():
    unresolved = statistics.verdict(statistics.t_interval([1.0, -1.0, 2.0]), "x helps", "points")
    assert "not resolved at this scale" in unresolved and unresolved.startswith("+0.67 points [")
    resolved = statistics.verdict(statistics.t_interval([3.0, 3.2, 2.9]), "x helps", "points")
    assert "supports the claim that x helps" in resolved
    against = statistics.verdict(statistics.t_interval([-3.0, -3.2, -2.9]), "x helps", "epochs")
    assert "contradicts the claim that x helps" in against and "epochs" in against
    single = statistics.verdict(statistics.t_interval([1.5]), "x helps", "points")
    assert "one seed" in single and "not resolved" in single


def test_seeds_to_resolve_is_the_fewest_n_whose_t_interval_excludes_zero():
    # d = 1, sd = 1: t_{0.975,5}/sqrt(6) = 2.571/2.449 = 1.050 (not below 1), t_{0.975,6}/sqrt(7) = 2.447/2.646 =
    # 0.925 (below): 7 seeds (t table values)
    assert statistics.seeds_to_resolve(1.0, 1.0) == 7
    assert statistics.seeds_to_resolve(-1.0, 1.0) == 7  # the sign does not matter
    for difference, sd in ((3.94, 0.71), (-1.18, 2.19), (2.83, 2.19), (0.79, 9.08)):
        n = statistics.seeds_to_resolve(difference, sd)
        # the direct formula: resolved at n, not at n - 1
        half = [stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k) if k >= 2 else math.inf for k in (n - 1, n)]
        assert half[1] < abs(difference) <= half[0], (difference, sd, n)
    # the observed spread of a known sample, and its interval: resolved exactly when the interval excludes 0
    sample = [4.72, 3.74, 3.35]
    interval = statistics.t_interval(sample)
    assert statistics.seeds_to_resolve(interval.mean, interval.sd) <= 3 and not interval.contains_zero()
    assert statistics.resolves(interval.mean, interval.sd, 3) == (not interval.contains_zero())
    unresolved = statistics.t_interval([1.0, -1.0, 2.0])
    assert statistics.seeds_to_resolve(unresolved.mean, unresolved.sd) > 3 and unresolved.contains_zero()
    assert statistics.seeds_to_resolve(2.0, 0.0) == 2  # no spread: the fewest seeds an interval has
    assert statistics.seeds_to_resolve(0.0, 1.0) is None  # a difference of 0 never is
    assert statistics.seeds_to_resolve(0.01, 10.0, max_seeds=1000) is None  # beyond the search bound
    assert statistics.seeds_to_resolve(1.0, 1.0, confidence=0.99) > 7
    with pytest.raises(ValueError, match="sd >= 0"):
        statistics.seeds_to_resolve(1.0, -1.0)
    with pytest.raises(ValueError, match="n >= 2"):
        statistics.resolves(1.0, 1.0, 1)
