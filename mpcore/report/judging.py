"""How a run's repeats are judged for its report: the times per configuration, the comparisons
with the baseline (:func:`mpcore.run.stats.compare_all`), the footnotes on them (the method and
its family-wise rate, the A/A control's noise floor) and what
``results.json`` keeps of them under ``statistics``. No TensorFlow here.

A report judges a run once (:func:`judge`) and hands that :class:`Judgement` to everything it
writes (the table and its notes, the CSV, the step-time plot, ``statistics``): the statistics
are computed once per report, and no two outputs can come from different computations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mpcore.names import BASELINE
from mpcore.report.target import has_target, target_records, time_comparisons
from mpcore.run.stats import (
    ALPHA,
    BAND,
    FASTER,
    SLOWER,
    Comparison,
    compare_all,
    family_error_rate,
    is_control,
    minimum_repeats,
    noise_floor,
    spread_warnings,
)


def repeat_times(record: dict[str, Any]) -> list[float]:
    """The steady ms/step of every finished repeat of a configuration (its one result when
    the record has no ``repeats``)."""
    if record.get("status") != "ok":
        return []
    runs = record.get("repeats")
    if runs is None:
        return [record["result"]["ms_per_step"]]
    return [run["ms_per_step"] for run in runs if run.get("status") == "ok"]


def max_repeats(document: dict[str, Any]) -> int:
    return max((len(repeat_times(r)) for r in document.get("configurations", [])), default=0)


def band_of(document: dict[str, Any], band: float | None = None) -> float:
    """The practical-equivalence band: ``band`` when given, else the run's (``--band``)."""
    if band is not None:
        return band
    return float((document.get("statistics") or {}).get("band", BAND))


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A run judged once for one report (:func:`judge`)."""

    #: The practical-equivalence band the verdicts used.
    band: float
    #: Each configuration's steady ms/step per finished repeat (empty when it failed).
    times: dict[str, list[float]]
    #: Every configuration with repeats against the baseline, one family (empty without).
    steps: dict[str, Comparison]
    #: Time to target against the baseline's (``--target``), its own family (empty without).
    to_target: dict[str, Comparison]

    @property
    def repeated(self) -> dict[str, list[float]]:
        """The configurations that ran more than once, with their times."""
        return {name: values for name, values in self.times.items() if len(values) > 1}

    @property
    def family(self) -> list[Comparison]:
        """The comparisons that are claims about a configuration (the A/A control is not)."""
        return [c for name, c in self.steps.items() if not is_control(name)]


def judge(document: dict[str, Any], band: float | None = None) -> Judgement:
    """Judge ``document``'s run once: ``band`` when given, else the run's own (``--band``)."""
    band = band_of(document, band)
    times = {r.get("name"): repeat_times(r) for r in document.get("configurations", [])}
    steps = (
        compare_all(times, BASELINE, band=band)
        if max_repeats(document) >= 2 and times.get(BASELINE)
        else {}
    )
    to_target = time_comparisons(document, band) if has_target(document) else {}
    return Judgement(band, times, steps, to_target)


def statistics_note(judged: Judgement) -> str:
    """The footnote on the speedups of a run with repeats: the method, the band, and the
    family-wise false-call rate computed from the repeats each comparison actually had."""
    family = judged.family
    counts = [(c.baseline_count, c.count) for c in family]
    rate = family_error_rate(counts)
    note = (
        f"speedup: {BASELINE}'s steady ms/step over each configuration's, the Hodges-Lehmann "
        "estimate (median of every repeat-to-repeat ratio); interval: exact distribution-free "
        "(Moses, from the Mann-Whitney distribution) at each comparison's Holm level; verdict: "
        f"faster/slower when the interval lies beyond +-{judged.band:.1%}, no "
        "practical difference inside that band, undecided otherwise"
    )
    if not family:
        return note
    least = minimum_repeats(len(family))
    fewest = min(min(pair) for pair in counts)
    compared = f"{len(family)} comparison{'s' if len(family) > 1 else ''}"
    if rate == 0:
        return note + (
            f"; with {fewest} repeats no comparison can be decided: {compared} need {least} "
            f"repeats each (mpbench run --repeats {least})"
        )
    most = max(max(pair) for pair in counts)
    repeats = str(fewest) if fewest == most else f"{fewest} to {most}"
    return note + (
        f"; with these repeats ({repeats} a configuration, {compared}) identical "
        "configurations would get a false faster/slower somewhere in the run with probability "
        f"at most {rate:.1%} (Holm: {ALPHA:.0%} at most)"
    )


def control_notes(judged: Judgement) -> list[str]:
    """The A/A control's noise floor, and a loud warning when it was itself called different."""
    times = judged.repeated
    notes = []
    for name in [name for name in times if is_control(name)]:
        if not times.get(BASELINE):
            continue
        floor = noise_floor(times[BASELINE], times[name])
        notes.append(
            f"noise floor: on this machine identical work differed by up to {floor:.1%} "
            f"({name} against {BASELINE}, repeat against repeat)"
        )
        verdict = judged.steps[name].verdict if name in judged.steps else None
        if verdict in (FASTER, SLOWER):
            notes.append(
                f"WARNING: THE A/A CONTROL CAME OUT {verdict.upper()}: identical work looked "
                "different, so this machine was too noisy to trust the other verdicts of this run"
            )
    return notes


def run_statistics(
    document: dict[str, Any], band: float | None = None, judged: Judgement | None = None
) -> dict[str, Any]:
    """What a run's ``statistics`` key in results.json holds: the method's settings, every
    comparison with the baseline, the family-wise rate, the warnings and the noise floor
    (from ``judged`` when the report has judged the run already, ``band`` then unused)."""
    judged = judged or judge(document, band)
    family = judged.family
    times = judged.repeated
    controls = [name for name in times if is_control(name) and times.get(BASELINE)]
    return {
        "alpha": ALPHA,
        "band": judged.band,
        "family_error_rate": family_error_rate([(c.baseline_count, c.count) for c in family]),
        "minimum_repeats": minimum_repeats(len(family)) if family else None,
        "comparisons": [
            {
                "name": name,
                "speedup": c.speedup,
                "low": c.low if c.low > 0 else None,
                "high": c.high if math.isfinite(c.high) else None,
                "verdict": c.verdict,
                "p_value": c.p_value,
                "adjusted_p": c.adjusted_p,
                "level": c.level,
                "control": is_control(name),
            }
            for name, c in judged.steps.items()
        ],
        "warnings": spread_warnings(times),
        "control": controls[0] if controls else None,
        "noise_floor": noise_floor(times[BASELINE], times[controls[0]]) if controls else None,
        "time_to_target": (
            target_records(document, judged.steps, judged.band, judged.to_target)
            if has_target(document)
            else None
        ),
    }
