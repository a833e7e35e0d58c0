"""Repeated timings: speedups with intervals that hold for a whole run, and verdicts on them.

``mpbench run --repeats N`` trains every configuration N times in an interleaved order, so each
configuration has N steady ms/step figures measured under the same drifting machine. Every
configuration is compared with the baseline, and the comparisons of one run are judged together
(the argument is in docs/statistics.md):

- **estimate**: the speedup ``baseline / other`` is ``exp`` of the Hodges-Lehmann estimate of the
  log-ratio, the median of every pairwise ``log(base_i) - log(other_j)``. Timings are positive
  and their noise multiplicative, so the log scale makes a 2x speedup and a 2x slowdown equally
  far from 1.0x.
- **interval**: the distribution-free Moses interval for that shift, two order statistics of the
  pairwise differences whose ranks come from the exact Mann-Whitney distribution of ``U`` under
  "the same work" (:mod:`mpcore.run.ranks`). No seed, no normality, exact at any sample size
  this tool meets (a normal approximation only beyond :data:`EXACT_LIMIT` pairs).
- **correction**: Holm's step-down over the run's comparisons on the exact two-sided Mann-Whitney
  p-values; each comparison's interval is taken at the level Holm tested it at, so the chance of
  *any* false "faster" or "slower" in a run stays at most ``alpha``.
- **band**: a difference is a verdict only when it matters. The interval entirely beyond
  ``1 + band`` (or below ``1 / (1 + band)``) says "faster" ("slower"); entirely inside the band,
  "no practical difference"; otherwise "undecided" (more repeats would decide it).

The extreme outcome (every repeat of one configuration faster than every repeat of the other)
has probability ``2 / C(2n, n)`` under the same work, so with ``m`` comparisons at level
``alpha`` nothing can ever be called below :func:`minimum_repeats`. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

from mpcore.names import CONTROL_SUFFIX
from mpcore.run.ranks import (
    holm,
    log_differences,
    median_sorted,
    moses_interval,
    null_cdf,
    p_values,
    u_statistic,
)

#: The verdicts of a comparison; :func:`decide` gives each as its index in :data:`VERDICTS`.
FASTER, SLOWER, SAME, UNDECIDED = "faster", "slower", "no practical difference", "undecided"
VERDICTS: tuple[str, ...] = (FASTER, SLOWER, SAME, UNDECIDED)

#: Defaults of ``mpbench run``/``report``/``compare``: the family-wise error rate of one run and
#: the practical-equivalence band (relative, 0.03 = +-3%).
ALPHA = 0.05
BAND = 0.03

#: Values a side beyond which a comparison uses evenly spaced ones in run order: a saved
#: pytest-benchmark file can hold tens of thousands of rounds, and ``n * m`` differences of those
#: would not fit in memory.
MAX_VALUES = 2000

#: Pyperf's rule: a spread above this coefficient of variation makes a comparison hard to trust.
CV_WARNING = 0.10
#: Iglewicz and Hoaglin's cut for an outlier on the modified z-score (hyperfine uses it too).
OUTLIER_Z = 3.5


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median of repeated measurements with their smallest and largest."""

    median: float
    low: float
    high: float
    count: int


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One configuration against the baseline, judged with the run's other comparisons."""

    #: ``baseline / other`` as the Hodges-Lehmann estimate on the log scale (above 1: faster).
    speedup: float
    #: The interval on the speedup at ``1 - level`` (``0`` and ``inf`` when the repeats are too
    #: few for any finite interval at that level).
    low: float
    high: float
    #: One of :data:`VERDICTS`.
    verdict: str
    #: The exact two-sided Mann-Whitney p-value for "the same work", and Holm's adjusted one.
    p_value: float
    adjusted_p: float
    #: The error rate this comparison's test and interval were taken at (Holm's step level).
    level: float
    #: The repeats on each side.
    baseline_count: int
    count: int

    @property
    def decided(self) -> bool:
        return self.verdict != UNDECIDED

    @property
    def adjusted_alpha(self) -> float:
        return self.level


def spread(values: Sequence[float]) -> Spread:
    """The median, min and max of ``values`` (at least one)."""
    if not values:
        raise ValueError("spread of no values")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def chance_of_no_overlap(repeats: int) -> float:
    """The probability that N timings of one configuration all lie on the same side of N of
    another's when both measure the same work: the smallest p-value N repeats a side can give."""
    return 2 / math.comb(2 * repeats, repeats)


def minimum_repeats(comparisons: int, alpha: float = ALPHA) -> int:
    """The fewest repeats per configuration with which Holm's first step (``alpha /
    comparisons``) can be passed at all: below it every comparison of the run is undecided."""
    if comparisons < 1:
        return 1
    repeats = 2
    while chance_of_no_overlap(repeats) > alpha / comparisons:
        repeats += 1
    return repeats


def repeats_problem(repeats: int, comparisons: int, alpha: float = ALPHA) -> str | None:
    """Why ``repeats`` cannot decide any of ``comparisons`` comparisons, in one line (None when
    they can, or when ``repeats`` is 1: a single measurement that claims no verdict)."""
    if repeats == 1 or comparisons < 1:
        return None
    least = minimum_repeats(comparisons, alpha)
    if repeats >= least:
        return None
    return (
        f"--repeats {repeats} can never tell a difference from noise across {comparisons} "
        f"comparison(s) at a {alpha:.0%} family-wise error rate: use at least {least} "
        "(or 1 for a single measurement with no verdicts)"
    )


def planned_repeats(requested: int | None, default: int, comparisons: int) -> int:
    """The repeats of a run: ``requested`` unless :func:`repeats_problem` refuses it
    (``ValueError`` with its line); unset, ``default`` raised to :func:`minimum_repeats`."""
    if not requested:
        return max(default, minimum_repeats(comparisons))
    problem = repeats_problem(requested, comparisons)
    if problem:
        raise ValueError(problem)
    return requested


# --------------------------------------------------------------------------------------------
# Comparisons, vectorised over independent runs (the run's own comparisons, or a simulation's)


def verdict_codes(
    low: np.ndarray, high: np.ndarray, rejected: np.ndarray, band: float = BAND
) -> np.ndarray:
    """Index into :data:`VERDICTS` of each log-scale interval ``[low, high]``."""
    edge = math.log1p(band)
    faster = rejected & (low > edge)
    slower = rejected & (high < -edge)
    same = (low >= -edge) & (high <= edge)
    return np.select([faster, slower, same], [0, 1, 2], default=3)


def decide(
    base: np.ndarray, others: np.ndarray, alpha: float = ALPHA, band: float = BAND
) -> dict[str, np.ndarray]:
    """Judge ``others`` (shape ``(R, k, m)``: R independent runs, k configurations, m repeats)
    against ``base`` (``(R, n)``), the k comparisons of each run as one family.

    Returns arrays of shape ``(R, k)``: ``speedup``, ``low``, ``high`` (ratios), ``verdict``
    (codes into :data:`VERDICTS`), ``p``, ``adjusted_p``, ``level``. This is what
    :func:`compare_all` computes for one run; a simulation calls it on many at once."""
    base = np.asarray(base, dtype=float)
    others = np.asarray(others, dtype=float)
    if base.ndim != 2 or others.ndim != 3 or others.shape[0] != base.shape[0]:
        raise ValueError("base must be (runs, n) and others (runs, configurations, m)")
    if (base <= 0).any() or (others <= 0).any():
        raise ValueError("times per step must be positive")
    n, m = base.shape[-1], others.shape[-1]
    differences = log_differences(base[:, None, :], others)
    estimate = median_sorted(differences)
    p = p_values(u_statistic(differences), n, m)
    rejected, level, adjusted = holm(p, alpha)
    low, high = moses_interval(differences, n, m, level)
    return {
        "speedup": np.exp(estimate),
        "low": np.exp(low),
        "high": np.exp(high),
        "verdict": verdict_codes(low, high, rejected, band),
        "p": p,
        "adjusted_p": adjusted,
        "level": level,
    }


def _thinned(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if len(array) <= MAX_VALUES:
        return array
    return array[np.linspace(0, len(array) - 1, MAX_VALUES).round().astype(int)]


def is_control(name: str) -> bool:
    """Whether ``name`` is an A/A control row (see :func:`compare_all`)."""
    return name.endswith(CONTROL_SUFFIX)


def compare_all(
    rows: Mapping[str, Sequence[float]],
    baseline: str,
    *,
    alpha: float = ALPHA,
    band: float = BAND,
    controls: Sequence[str] | None = None,
) -> dict[str, Comparison]:
    """Every row of ``rows`` (name -> repeated times per step) against ``baseline``, the
    comparisons of this one run corrected together (Holm). Rows with no values, and the
    baseline itself, are left out; the sizes of the rows may differ.

    ``controls`` (default: the rows named ``... (A/A)``) are judged the same way but are no
    claim about a configuration, so they stay out of the family: each is tested at Holm's
    strictest level, ``alpha`` over the family's size, and an A/A row called faster or slower
    is the alarm that the machine was noisier than the test allows for."""
    if baseline not in rows or not len(rows[baseline]):
        raise ValueError(f"no times for the baseline {baseline!r}")
    pairs = {
        name: (rows[baseline], values)
        for name, values in rows.items()
        if name != baseline and len(values)
    }
    if controls is None:
        controls = [name for name in pairs if is_control(name)]
    return compare_pairs(pairs, alpha=alpha, band=band, controls=controls)


def compare_pairs(
    pairs: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    alpha: float = ALPHA,
    band: float = BAND,
    controls: Sequence[str] = (),
) -> dict[str, Comparison]:
    """Each ``name -> (before, after)`` pair of repeated times, ``before / after`` with its
    interval and verdict, the pairs not in ``controls`` corrected together as one family
    (Holm); see :func:`compare_all`. Every pair needs a value on each side."""
    samples = {name: (_thinned(a), _thinned(b)) for name, (a, b) in pairs.items()}
    if any(not len(a) or not len(b) for a, b in samples.values()):
        raise ValueError("a comparison needs times on both sides")
    if any((a <= 0).any() or (b <= 0).any() for a, b in samples.values()):
        raise ValueError("times per step must be positive")
    names = list(samples)
    family = [name for name in names if name not in set(controls)]
    differences = {name: log_differences(*samples[name]) for name in names}
    p = {
        name: float(p_values(u_statistic(differences[name]), *map(len, samples[name])))
        for name in names
    }
    tested: dict[str, tuple[bool, float, float]] = {}  # rejected, level, adjusted p
    if family:
        rejected, level, adjusted = holm(np.array([p[name] for name in family]), alpha)
        for index, name in enumerate(family):
            tested[name] = (bool(rejected[index]), float(level[index]), float(adjusted[index]))
    strictest = alpha / max(len(family), 1)
    for name in names:
        if name not in tested:
            adjusted_p = min(1.0, p[name] * max(len(family), 1))
            tested[name] = (p[name] <= strictest * (1 + 1e-9), strictest, adjusted_p)
    comparisons = {}
    for name in names:
        n, m = map(len, samples[name])
        rejected_one, level_one, adjusted_one = tested[name]
        low, high = moses_interval(differences[name], n, m, np.asarray(level_one))
        code = verdict_codes(low, high, np.asarray(rejected_one), band)
        comparisons[name] = Comparison(
            speedup=float(np.exp(median_sorted(differences[name]))),
            low=float(np.exp(low)),
            high=float(np.exp(high)),
            verdict=VERDICTS[int(code)],
            p_value=p[name],
            adjusted_p=adjusted_one,
            level=level_one,
            baseline_count=n,
            count=m,
        )
    return comparisons


def family_error_rate(counts: Sequence[tuple[int, int]], alpha: float = ALPHA) -> float:
    """The chance, at most, that a run whose comparisons have these ``(baseline, other)``
    repeat counts calls a configuration faster or slower when all do the same work.

    Then Holm errs only if its first step does, so the chance is at most the sum over the
    comparisons of the size the exact test can attain at ``alpha / len(counts)``: the
    discreteness of the test at a few repeats keeps it below ``alpha`` (which Holm guarantees
    whatever the true differences), and at zero below :func:`minimum_repeats`."""
    if not counts:
        return 0.0
    first = alpha / len(counts)
    total = 0.0
    for n, m in counts:
        cdf = null_cdf(n, m)
        attainable = 2 * cdf[2 * cdf <= first * (1 + 1e-9)]
        total += float(attainable[-1]) if len(attainable) else 0.0
    return min(alpha, total)


# --------------------------------------------------------------------------------------------
# Warnings and the A/A noise floor


def spread_warnings(rows: Mapping[str, Sequence[float]], unit: str = "ms/step") -> list[str]:
    """Pyperf-style warnings on repeated timings: a coefficient of variation over
    :data:`CV_WARNING`, and each repeat whose modified z-score (Iglewicz-Hoaglin: ``0.6745 (x -
    median) / MAD``) is over :data:`OUTLIER_Z`, named by configuration and repeat (from 1)."""
    warnings = []
    for name, values in rows.items():
        array = np.asarray(values, dtype=float)
        if len(array) < 2:
            continue
        # The ratio does not depend on the unit: taken on values scaled to at most 1, huge
        # figures (a hand-edited results.json) do not overflow the squares of the deviation.
        peak = float(np.max(np.abs(array)))
        scaled = array / peak if 0 < peak < np.inf else array
        mean = float(scaled.mean())
        cv = float(scaled.std(ddof=1)) / mean if mean > 0 else 0.0
        if cv > CV_WARNING:
            warnings.append(
                f"{name}: its repeats vary by {cv:.0%} of their mean (over {CV_WARNING:.0%}): "
                "the machine was busy or the runs too short; its comparisons are less certain"
            )
        if len(array) < 3:
            continue
        median = float(np.median(array))
        mad = float(np.median(np.abs(array - median)))
        # With half the values equal the MAD is 0: the mean absolute deviation stands in
        # (scaled to the MAD's expectation for normal data), as hyperfine does.
        scale = mad if mad > 0 else float(np.abs(array - median).mean()) * 0.7979
        if scale <= 0:
            continue
        for index, value in enumerate(array):
            z = 0.6745 * (value - median) / scale
            if abs(z) > OUTLIER_Z:
                warnings.append(
                    f"{name}: repeat {index + 1} ({value:.1f} {unit}) is an outlier "
                    f"(modified z-score {z:+.1f}; median {median:.1f} {unit})"
                )
    return warnings


def noise_floor(a: Sequence[float], b: Sequence[float]) -> float:
    """The largest relative difference between any repeat of ``a`` and any of ``b``, two runs
    of identical work (an A/A control): ``max(max(a)/min(b), max(b)/min(a)) - 1``, so 0.08 reads
    "identical work differed by up to 8%"."""
    if not len(a) or not len(b):
        raise ValueError("noise floor of no values")
    if min(a) <= 0 or min(b) <= 0:
        raise ValueError("times per step must be positive")
    return max(max(a) / min(b), max(b) / min(a)) - 1
