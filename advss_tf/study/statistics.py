"""Means over seeds with Student-t 95 % intervals, paired differences, and the one-line verdicts of the report."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """mean ± half_width (the t interval at `confidence`); half_width is None for fewer than two values."""

    mean: float
    half_width: float | None
    n: int
    sd: float | None
    confidence: float = CONFIDENCE

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def contains_zero(self) -> bool | None:
        return None if self.half_width is None else self.low <= 0.0 <= self.high

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "half_width": self.half_width,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "sd": self.sd,
            "confidence": self.confidence,
        }


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` and its two-sided Student-t interval: mean ± t_{(1+c)/2, n-1} · sd / sqrt(n).

    One value gives the mean and no interval; none is a ValueError.
    """
    from scipy import stats

    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("no values to average")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, None, n, None, confidence)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, half, n, sd, confidence)


MAX_SEEDS = 100_000  # seeds_to_resolve's search bound: beyond it, "more than MAX_SEEDS"


def resolves(difference: float, sd: float, n: int, confidence: float = CONFIDENCE) -> bool:
    """Whether n paired differences with mean `difference` and standard deviation `sd` give a t interval that
    excludes 0: t_{(1+c)/2, n-1} · sd / sqrt(n) < |difference| (n >= 2)."""
    from scipy import stats

    if n < 2:
        raise ValueError(f"an interval needs n >= 2 seeds, got {n}")
    return float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n) < abs(difference)


def seeds_to_resolve(
    difference: float, sd: float, confidence: float = CONFIDENCE, max_seeds: int = MAX_SEEDS
) -> int | None:
    """The fewest seeds n >= 2 at which a mean paired difference `difference`, with the seeds' differences spread as
    `sd`, has a t interval that excludes 0 (`resolves`); None when no n <= `max_seeds` does (a difference of 0
    never does).

    This plugs the observed spread in as if it were known: it says whether "not resolved" means "too few seeds"
    (a handful more would do) or "no effect this size" (hundreds would be needed), not the power of a new study.
    """
    if sd < 0 or math.isnan(sd) or math.isnan(difference):
        raise ValueError(f"need a finite difference and sd >= 0, got {difference}, {sd}")
    if difference == 0 or not resolves(difference, sd, max_seeds, confidence):
        return None
    low, high = 1, max_seeds  # resolves(high) holds; the condition is monotone in n (t and 1/sqrt(n) both fall)
    while high - low > 1:
        mid = (low + high) // 2
        if resolves(difference, sd, mid, confidence):
            high = mid
        else:
            low = mid
    return high


def paired_differences(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    """a[seed] − b[seed] for every seed both have (a paired design: same seed, same data order)."""
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def verdict(interval: Interval, claim: str, unit: str) -> str:
    """One line: the difference with its interval, and whether it settles `claim` at this scale."""
    if interval.half_width is None:
        return f"{_signed(interval.mean)} {unit} from one seed: no interval, not resolved at this scale"
    span = f"{_signed(interval.mean)} {unit} [{_signed(interval.low)}, {_signed(interval.high)}], n={interval.n}"
    if interval.contains_zero():
        return f"{span}: the interval contains 0, not resolved at this scale"
    return f"{span}: {'supports' if interval.mean > 0 else 'contradicts'} the claim that {claim}"


def _signed(x: float) -> str:
    return f"{x:+.2f}"
