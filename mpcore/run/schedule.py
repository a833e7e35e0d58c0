"""The order a run trains its repeats in: interleaved rounds, spread evenly, built lazily.

No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence


def interleaved_rounds(wanted: Mapping[str, Sequence[int]]) -> Iterator[tuple[str, int]]:
    """``(name, repeat)`` in run order for the repeats ``wanted[name]`` of each configuration,
    lazily (a ``range`` is never expanded): round ``k`` runs the ``k``-th wanted repeat of every
    configuration that has one, in the planned order rotated by ``k x configurations / rounds``.

    The rotations are spread evenly over the rounds, so with R rounds of N configurations each
    configuration holds every position of a round floor(R/N) or ceil(R/N) times, and when R < N
    its R positions are N/R apart (rounded), spread over the whole round instead of R
    neighbouring ones: a drift of the machine along a round lands on every configuration
    nearly alike. A rotation that would run a configuration twice in a row (with
    two configurations, every other round) is turned once more (A B A B): the load of a shared
    machine comes in bursts longer than one run, and two runs in a row of one configuration
    could both fall in one."""
    names = list(wanted)
    counts = {name: count(wanted[name]) for name in names}
    rounds = max(counts.values(), default=0)
    previous = None
    for k in range(rounds):
        present = [name for name in names if counts[name] > k]
        shift = (k * len(present)) // rounds
        order = present[shift:] + present[:shift]
        if len(order) > 1 and order[0] == previous:
            order = order[1:] + order[:1]
        for name in order:
            yield name, wanted[name][k]
        previous = order[-1]


def count(runs: Sequence[int]) -> int:
    """``len(runs)``, also for a ``range`` longer than ``len()`` can answer (over 2**63)."""
    return runs.stop - runs.start if isinstance(runs, range) else len(runs)


def iter_schedule(names: list[str], repeats: int) -> Iterator[tuple[str, int]]:
    """Every repeat of every configuration in run order (:func:`interleaved_rounds`), lazily."""
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    return interleaved_rounds({name: range(repeats) for name in names})


def interleaved_schedule(names: list[str], repeats: int) -> list[tuple[str, int]]:
    """:func:`iter_schedule` as a list."""
    return list(iter_schedule(names, repeats))


def round_order(names: list[str], k: int, previous: str | None) -> list[str]:
    """One extra round (``--repeats auto``): the planned order rotated by ``k``, turned once
    more if it would start with the configuration that ran last."""
    order = names[k % len(names) :] + names[: k % len(names)]
    if len(order) > 1 and order[0] == previous:
        order = order[1:] + order[:1]
    return order


def duration(seconds: float) -> str:
    """``45 s``, ``3 min``, ``1 h 5 min``: a time for a person to plan by."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
