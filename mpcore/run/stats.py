"""Repeated timings: the median with its min-max spread, and a speedup with its interval.

``mpbench run --repeats N`` trains every configuration N times in an interleaved order, so each
configuration has N steady ms/step figures measured under the same drifting machine. A speedup
is the ratio of two medians; its interval is the range of every ratio between one repeat of the
baseline and one repeat of the configuration, ``[min(base) / max(other), max(base) / min(other)]``.
The speedup is significant only when that interval excludes 1.0, that is when every repeat of
one configuration was faster than every repeat of the other. For two configurations that run the
same work (exchangeable timings) that happens by chance with probability ``2 / C(2N, N)``: 10% at
N=3, 2.9% at N=4, 0.8% at N=5 (:func:`chance_of_no_overlap`). Min-max needs no seed and, at
three repeats, equals a percentile bootstrap of the ratio of medians. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median of repeated measurements with their smallest and largest."""

    median: float
    low: float
    high: float
    count: int


@dataclasses.dataclass(frozen=True)
class Speedup:
    """``baseline / other`` of medians, its min-max interval and whether it excludes 1.0."""

    ratio: float
    low: float
    high: float
    #: None when either side has fewer than two repeats (nothing to judge the noise by).
    significant: bool | None


def spread(values: Sequence[float]) -> Spread:
    """The median, min and max of ``values`` (at least one)."""
    if not values:
        raise ValueError("spread of no values")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def speedup(baseline: Sequence[float], other: Sequence[float]) -> Speedup:
    """How much faster ``other`` is than ``baseline``, from their repeated times per step."""
    base, mine = spread(baseline), spread(other)
    if min(base.low, mine.low) <= 0:
        raise ValueError("times per step must be positive")
    low, high = base.low / mine.high, base.high / mine.low
    significant = None if min(base.count, mine.count) < 2 else not low <= 1.0 <= high
    return Speedup(base.median / mine.median, low, high, significant)


def chance_of_no_overlap(repeats: int) -> float:
    """The probability that N timings of one configuration all lie on the same side of N of
    another's when both measure the same work: a false "significant" at ``repeats`` each."""
    return 2 / math.comb(2 * repeats, repeats)
