"""Rank statistics for comparing two sets of timings: the exact Mann-Whitney distribution, its
p-values, the Moses interval's ranks, and Holm's step-down, vectorised with numpy.

Everything here works on the log scale of times per step and over leading axes, so a run's
comparisons and a simulation's ten thousand runs go through the same code
(:func:`mpcore.run.stats.decide`). No TensorFlow here.
"""

from __future__ import annotations

import functools
import math

import numpy as np

#: Pairs ``n * m`` up to which the Mann-Whitney distribution is exact (beyond: normal).
EXACT_LIMIT = 2500


@functools.lru_cache(maxsize=256)
def mann_whitney_null(n: int, m: int) -> np.ndarray:
    """P(U = u) for u = 0..n*m when ``n`` and ``m`` values come from one continuous
    distribution (``U``: pairs where the first sample's value is the larger).

    The recursion ``p(n, m, u) = n/(n+m) p(n-1, m, u-m) + m/(n+m) p(n, m-1, u)`` (the largest
    of all the values belongs to the first sample or to the second) in probabilities, so no
    count overflows."""
    if n < 0 or m < 0:
        raise ValueError("sample sizes must be non-negative")
    if n == 0 or m == 0:
        return np.ones(1)
    smaller, larger = sorted((n, m))  # U's distribution is symmetric in the two sizes
    if (smaller, larger) != (n, m):
        return mann_whitney_null(smaller, larger)
    # rows[j]: the distribution for (i, j) at the current i, j = 0..m
    rows = [np.ones(1) for _ in range(m + 1)]
    for i in range(1, n + 1):
        new = [np.ones(1)]
        for j in range(1, m + 1):
            pmf = np.zeros(i * j + 1)
            pmf[j:] += i / (i + j) * rows[j]  # the largest is the first sample's: u grows by j
            pmf[: len(new[j - 1])] += j / (i + j) * new[j - 1]
            new.append(pmf)
        rows = new
    return rows[m]


@functools.lru_cache(maxsize=256)
def null_cdf(n: int, m: int) -> np.ndarray:
    """P(U <= u) for u = 0..n*m: exact up to :data:`EXACT_LIMIT` pairs, beyond that the
    normal approximation with a continuity correction."""
    if n * m > EXACT_LIMIT:
        mean, sd = n * m / 2, math.sqrt(n * m * (n + m + 1) / 12)
        u = np.arange(n * m + 1) + 0.5  # continuity correction
        return 0.5 * (1 + _erf((u - mean) / (sd * math.sqrt(2))))
    return np.minimum(np.cumsum(mann_whitney_null(n, m)), 1.0)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[float])(x)


def p_values(u: np.ndarray, n: int, m: int) -> np.ndarray:
    """Two-sided p-values of Mann-Whitney statistics ``u`` (ties count a half; a half is
    rounded against rejecting)."""
    cdf = null_cdf(n, m)
    u = np.asarray(u, dtype=float)
    lower = cdf[np.ceil(u).astype(int)]
    # P(U >= k) = P(U <= n*m - k) by symmetry
    upper = cdf[(n * m - np.floor(u)).astype(int)]
    return np.minimum(1.0, 2 * np.minimum(lower, upper))


def interval_rank(n: int, m: int, level: np.ndarray | float) -> np.ndarray:
    """The rank ``k`` (from 1) of the sorted pairwise differences that bound the Moses interval
    at error rate ``level``: the largest ``k`` with ``P(U < k) <= level / 2``; 0 when even the
    most extreme outcome is likelier (no finite interval)."""
    cdf = null_cdf(n, m)
    half = np.asarray(level, dtype=float) / 2
    return np.searchsorted(cdf, half * (1 + 1e-9), side="right")


def holm(p: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm's step-down over the last axis of ``p``: ``(rejected, level, adjusted_p)``.

    ``level`` is the error rate each hypothesis was tested at: ``alpha / (m - j)`` for the
    j-th smallest p-value while they are rejected, and the level Holm stopped at for the rest
    (their intervals are taken there, so an interval that excludes 1.0 never contradicts the
    test)."""
    p = np.asarray(p, dtype=float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ordered = np.take_along_axis(p, order, axis=-1)
    steps = np.arange(m)
    thresholds = alpha / (m - steps)
    passed = np.cumprod(ordered <= thresholds * (1 + 1e-9), axis=-1).astype(bool)
    rejections = passed.sum(axis=-1, keepdims=True)
    stop_level = alpha / np.maximum(m - rejections, 1)
    level_sorted = np.where(passed, thresholds, stop_level)
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(ordered * (m - steps), axis=-1))
    inverse = np.argsort(order, axis=-1)
    return (
        np.take_along_axis(passed, inverse, axis=-1),
        np.take_along_axis(level_sorted, inverse, axis=-1),
        np.take_along_axis(adjusted_sorted, inverse, axis=-1),
    )


def log_differences(base: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Every ``log(base_i) - log(other_j)`` over the last axes, sorted: shape ``(..., n*m)``."""
    base, other = np.log(np.asarray(base, float)), np.log(np.asarray(other, float))
    differences = base[..., :, None] - other[..., None, :]
    return np.sort(differences.reshape(*differences.shape[:-2], -1), axis=-1)


def u_statistic(differences: np.ndarray) -> np.ndarray:
    return (differences > 0).sum(axis=-1) + 0.5 * (differences == 0).sum(axis=-1)


def moses_interval(
    differences: np.ndarray, n: int, m: int, level: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The Moses interval on the log scale at each ``level`` (``-inf, inf`` at rank 0)."""
    k = interval_rank(n, m, level)
    pairs = differences.shape[-1]
    safe = np.maximum(k, 1)
    low = np.take_along_axis(differences, (safe - 1)[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(differences, (pairs - safe)[..., None], axis=-1)[..., 0]
    return np.where(k > 0, low, -np.inf), np.where(k > 0, high, np.inf)


def median_sorted(values: np.ndarray) -> np.ndarray:
    """The median of each row of already sorted ``values``."""
    count = values.shape[-1]
    return (values[..., (count - 1) // 2] + values[..., count // 2]) / 2
