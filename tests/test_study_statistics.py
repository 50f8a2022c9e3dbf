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
