"""The largest batch that fits: the search, on any trial function (no TensorFlow here).

:func:`search_max_batch` asks a *trial* (a function of the batch size answering a
:class:`Trial`: did one training step at that batch fit, and its peak memory) as PyTorch
Lightning's ``BatchSizeFinder`` does: powers of two from ``start`` until the first batch that
does not fit or the ``upper`` bound, then a binary search between the largest power that fit
and the first that did not, down to adjacent sizes, so the answer is exact: the batch fits and
the next size up does not (or the answer is the bound). With the answer at ``T`` below the
bound, that is ``2 * floor(log2 T) + 2`` trials from ``start=1``.

The *margin* is what a user should run: the largest batch less ``margin`` of it (default 10%),
since a step that just fits in a fresh process can fail later beside fragmentation, a data
pipeline's prefetch buffers or an evaluation pass. The memory per sample is the slope of a
least-squares line through the peaks of the trials that fit (with its intercept, the memory that
does not grow with the batch), never one peak divided by its batch: the fixed part (runtime,
weights, optimizer slots, compiled kernels) would be counted per sample.

A memory size is written as ``2GiB``, ``512MiB``, ``1.5GB`` or a number of bytes
(:func:`parse_memory_size`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

#: The share of the largest fitting batch given up for safety in the recommended batch.
DEFAULT_MARGIN = 0.1
#: The largest batch tried unless asked otherwise.
DEFAULT_UPPER = 4096

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_memory_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit (B, kB/MB/GB/TB powers of 1000,
    KiB/MiB/GiB/TiB powers of 1024, case ignored); ``ValueError`` naming the text otherwise."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a memory size (a number with B, KiB, MiB, GiB, TiB, kB, MB, GB or "
            "TB, e.g. 2GiB)"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise ValueError(f"{text!r}: a memory size must be at least one byte")
    return int(value)


def format_bytes(value: float | None) -> str:
    """``1.5 GiB``, ``312.0 MiB``, ``12.3 KiB`` or ``512 B``; ``?`` for None."""
    if value is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training trial at ``batch``: whether it fitted, its peak memory, and why not."""

    batch: int
    fits: bool
    #: Peak memory the trial measured (bytes), None where it could not be read.
    peak_bytes: int | None = None
    #: Why it did not fit: ``out_of_memory`` (the device's error), ``over_limit`` (its peak
    #: passed the memory budget), ``crashed`` (the trial process died), or None.
    reason: str | None = None
    detail: str = ""
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclasses.dataclass
class SearchResult:
    """The outcome of :func:`search_max_batch`."""

    #: The largest batch that fitted (0: not even batch 1 fitted).
    batch: int
    #: The smallest batch that did not fit, None when the search stopped at ``upper``.
    first_failing: int | None
    upper: int
    margin: float
    trials: list[Trial]

    @property
    def hit_upper(self) -> bool:
        return self.first_failing is None and self.batch == self.upper

    @property
    def recommended(self) -> int:
        """The batch to run: the largest that fitted less the margin (at least 1 if any fit)."""
        if self.batch < 1:
            return 0
        return max(1, math.floor(self.batch * (1 - self.margin)))

    def trial_at(self, batch: int) -> Trial | None:
        for trial in self.trials:
            if trial.batch == batch:
                return trial
        return None

    @property
    def peak_bytes(self) -> int | None:
        """The peak memory of the trial at the answer."""
        trial = self.trial_at(self.batch)
        return trial.peak_bytes if trial else None

    def slope(self) -> tuple[float, float] | None:
        """(bytes per sample, fixed bytes) of the trials that fitted; None below two sizes."""
        return memory_line([t for t in self.trials if t.fits])

    def to_dict(self) -> dict[str, Any]:
        line = self.slope()
        return {
            "batch": self.batch,
            "recommended_batch": self.recommended,
            "first_failing": self.first_failing,
            "upper": self.upper,
            "hit_upper": self.hit_upper,
            "margin": self.margin,
            "peak_bytes": self.peak_bytes,
            "bytes_per_sample": None if line is None else line[0],
            "fixed_bytes": None if line is None else line[1],
            "trials": [t.to_dict() for t in self.trials],
        }


def memory_line(trials: Sequence[Trial]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of peak bytes against batch over ``trials`` with a
    known peak, the smallest batches left out where larger ones exist (their peaks are mostly
    fixed overhead and allocator rounding): those at least an eighth of the largest batch are
    used, or all when fewer than two sizes remain. None below two distinct batch sizes."""
    known = [t for t in trials if t.peak_bytes is not None]
    if not known:
        return None
    largest = max(t.batch for t in known)
    points = [t for t in known if 8 * t.batch >= largest]
    if len({t.batch for t in points}) < 2:
        points = known
    if len({t.batch for t in points}) < 2:
        return None
    n = len(points)
    mean_x = sum(t.batch for t in points) / n
    mean_y = sum(t.peak_bytes for t in points) / n  # type: ignore[misc]
    sxx = sum((t.batch - mean_x) ** 2 for t in points)
    sxy = sum((t.batch - mean_x) * (t.peak_bytes - mean_y) for t in points)  # type: ignore[operator]
    slope = sxy / sxx
    return slope, mean_y - slope * mean_x


def search_max_batch(
    trial: Callable[[int], Trial],
    upper: int = DEFAULT_UPPER,
    start: int = 1,
    margin: float = DEFAULT_MARGIN,
    log: Callable[[Trial], None] = lambda trial: None,
) -> SearchResult:
    """The largest batch in ``1..upper`` for which ``trial`` fits, assuming that fitting is
    monotone (a batch that fits means every smaller one does). Each trial is passed to ``log``
    as it ends. ``start`` above the answer is searched down by halving the interval."""
    if upper < 1 or start < 1:
        raise ValueError(f"the batch bounds must be positive, got start {start}, upper {upper}")
    if not 0 <= margin < 1:
        raise ValueError(f"the margin must be in 0..1, got {margin}")
    trials: list[Trial] = []

    def fits(batch: int) -> bool:
        result = trial(batch)
        if result.batch != batch:
            raise ValueError(f"a trial for batch {batch} answered for batch {result.batch}")
        trials.append(result)
        log(result)
        return result.fits

    largest, failing = 0, None
    batch = min(start, upper)
    while True:
        if not fits(batch):
            failing = batch
            break
        largest = batch
        if batch >= upper:
            break
        batch = min(2 * batch, upper)
    if failing is not None:
        while failing - largest > 1:
            middle = (largest + failing) // 2
            if fits(middle):
                largest = middle
            else:
                failing = middle
    return SearchResult(largest, failing, upper, margin, trials)


def ratio_phrase(precision: str, batch: int, baseline: int) -> str:
    """``mixed_bfloat16 fits 1.13x the batch`` (of float32's), or why there is no ratio."""
    if baseline < 1 or batch < 1:
        return f"{precision}: no ratio (a batch that did not fit)"
    return f"{precision} fits {batch / baseline:.2f}x the batch"
