"""Convergence parity under ``--target``: does a configuration need more epochs than the baseline?

MLPerf Training checks a submission's epochs-to-converge against reference convergence points
with a one-sided test, because a faster step is no gain if it needs more epochs. Here each
configuration's epochs to target over its repeats (different seeds) is compared with the
baseline's by an exact one-sided permutation test of the rank sum: no distribution is assumed,
ties (epoch counts tie often) are handled by midranks, and a repeat that never reached the
target counts as needing more epochs than any that did. With ``n`` repeats on each side the
smallest attainable p-value is ``1 / C(2n, n)``: 0.05 at 3 repeats, 0.014 at 4, so three repeats
can flag only a configuration whose every repeat needed more epochs than every baseline repeat.
No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Sequence

#: Above this many splits the exact test is replaced by a seeded Monte Carlo one.
EXACT_LIMIT = 200_000
MONTE_CARLO_DRAWS = 50_000


def _midranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def p_more(baseline: Sequence[float], other: Sequence[float]) -> float:
    """One-sided p-value that ``other`` tends to be larger than ``baseline`` (rank sum,
    exact permutation; ``inf`` allowed for "never reached")."""
    if not baseline or not other:
        raise ValueError("each side needs at least one value")
    pooled = [*baseline, *other]
    ranks = _midranks(pooled)
    n = len(other)
    observed = sum(ranks[len(baseline) :])
    total = math.comb(len(pooled), n)
    # The tolerance keeps a split equal to the observed one counted despite float rounding.
    tolerance = 1e-9
    if total <= EXACT_LIMIT:
        hits = sum(
            1 for chosen in itertools.combinations(ranks, n) if sum(chosen) >= observed - tolerance
        )
        return hits / total
    generator = random.Random(0)
    hits = sum(
        1
        for _ in range(MONTE_CARLO_DRAWS)
        if sum(generator.sample(ranks, n)) >= observed - tolerance
    )
    return (hits + 1) / (MONTE_CARLO_DRAWS + 1)


@dataclasses.dataclass(frozen=True)
class Parity:
    """The convergence-parity call of one configuration against the baseline."""

    verdict: str
    p_value: float
    baseline_epochs: float | None
    epochs: float | None
    reached: int
    repeats: int

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _mean_reached(values: Sequence[float]) -> float | None:
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) / len(finite) if finite else None


def epochs_parity(
    baseline: Sequence[float | None], other: Sequence[float | None], alpha: float = 0.05
) -> Parity:
    """Compare epochs to target (None: not reached) of ``other`` with ``baseline``'s.

    The verdict is ``needs more epochs`` when the one-sided p-value is at most ``alpha``,
    ``not reached`` when no repeat of ``other`` reached the target, and otherwise ``no more
    epochs`` (no evidence that it needs more; it may also need fewer)."""
    base = [math.inf if value is None else float(value) for value in baseline]
    mine = [math.inf if value is None else float(value) for value in other]
    reached = sum(math.isfinite(value) for value in mine)
    p_value = p_more(base, mine)
    if reached == 0:
        verdict = "not reached"
    elif p_value <= alpha:
        verdict = "needs more epochs"
    else:
        verdict = "no more epochs"
    return Parity(verdict, p_value, _mean_reached(base), _mean_reached(mine), reached, len(mine))
