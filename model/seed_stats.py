"""Statistics over training seeds: a metric's mean and spread, its mean with a 95 %
confidence interval (:func:`interval`), and the paired difference of two models trained
with the same seeds, with that interval on the mean difference.

The seeds of one model are independent runs; ProtoMask and a baseline trained with the
same seed share the seed's data order but nothing else, so the comparison pairs them by
seed and puts a Student-t interval on the mean of the per-seed differences:

    d_s = a_s - b_s,  mean d = (1/n) sum_s d_s,  s_d = sqrt(sum_s (d_s - mean d)^2 / (n - 1))
    95 % CI = mean d -+ t_{0.975, n-1} * s_d / sqrt(n)

With one seed there is no interval (n - 1 = 0): the difference is reported, the interval is
None and every claim on it is undecided.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    """A metric over seeds: mean, sample standard deviation (None for one seed), count."""

    mean: float
    std: Optional[float]
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass(frozen=True)
class Difference:
    """A mean over seeds and its 95 % interval (None when there is one seed): of the paired
    differences a - b (:func:`paired_difference`), or of one model's values
    (:func:`interval`)."""

    mean: float
    low: Optional[float]
    high: Optional[float]
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci95_low": self.low, "ci95_high": self.high, "n": self.n}


def spread(values: Sequence[float]) -> Optional[Spread]:
    """Mean and sample standard deviation (ddof 1) of ``values``; None when empty."""
    n = len(values)
    if n == 0:
        return None
    mean = statistics.fmean(values)
    if n == 1:
        return Spread(mean, None, 1)
    return Spread(mean, statistics.stdev(values), n)  # exact sums: equal values give 0


def interval(values: Sequence[float]) -> Optional[Difference]:
    """The mean of ``values`` with its Student-t 95 % interval (None bounds for a single
    value); None when empty."""
    summary = spread(values)
    if summary is None:
        return None
    if summary.std is None:
        return Difference(summary.mean, None, None, 1)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, summary.n - 1) * summary.std / math.sqrt(summary.n)
    return Difference(summary.mean, summary.mean - half, summary.mean + half, summary.n)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Optional[Difference]:
    """The mean of a[s] - b[s] over the seeds s in both, with its Student-t 95 % interval.

    Args:
        a: seed -> value of the first model (ProtoMask).
        b: seed -> value of the second model (a baseline).

    Returns:
        The difference (interval None for a single paired seed), or None when no seed is
        in both.
    """
    seeds = sorted(set(a) & set(b))
    return interval([a[s] - b[s] for s in seeds])


def decide(diff: Optional[Difference], want: str, margin: float = 0.0) -> str:
    """``holds``, ``does not hold`` or ``undecided`` for the claim that a - b is ``want``.

    ``lower``: the interval lies below 0 (holds) or above 0 (does not hold). ``higher``:
    the mirror image. ``competitive``: the interval lies above -margin (a is at most
    ``margin`` worse: holds) or below -margin (does not hold). An interval that contains
    the threshold, or no interval at all (one seed), is undecided.
    """
    if diff is None or diff.low is None or diff.high is None:
        return "undecided"
    if want == "lower":
        below, above = diff.high < 0, diff.low > 0
        return "holds" if below else "does not hold" if above else "undecided"
    if want == "higher":
        below, above = diff.high < 0, diff.low > 0
        return "holds" if above else "does not hold" if below else "undecided"
    if want == "competitive":
        above, below = diff.low > -margin, diff.high < -margin
        return "holds" if above else "does not hold" if below else "undecided"
    raise ValueError(f"unknown direction {want!r} (lower | higher | competitive)")
