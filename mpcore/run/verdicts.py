"""What the run itself decides from its timings: which comparisons are settled (``--repeats
auto``) and the A/A control's noise floor (``--control``). The statistics are
:mod:`mpcore.run.stats`'s; this module only gathers a run's times and asks, in one place.
No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mpcore.names import BASELINE, CONTROL_SUFFIX
from mpcore.run import stats


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One configuration against the baseline: the speedup, its interval and the call."""

    speedup: float
    low: float
    high: float
    #: "faster", "slower", "no practical difference" or "undecided".
    verdict: str
    decided: bool


def run_times(document: Mapping[str, Any]) -> dict[str, list[float]]:
    """The steady ms/step of every finished repeat of each configuration that finished ``ok``
    (a record from before repeats existed: its one result), in the document's order."""
    times: dict[str, list[float]] = {}
    for record in document.get("configurations", []):
        if record.get("status") != "ok":
            continue
        runs = record.get("repeats")
        if runs is None:
            times[record["name"]] = [record["result"]["ms_per_step"]]
        else:
            times[record["name"]] = [r["ms_per_step"] for r in runs if r.get("status") == "ok"]
    return times


def compare(rows: Mapping[str, Sequence[float]], baseline: str = BASELINE) -> dict[str, Verdict]:
    """Every configuration of ``rows`` but the baseline against it (none without a baseline)."""
    if len(rows.get(baseline, ())) == 0:
        return {}
    verdicts = {}
    for name, times in rows.items():
        if name == baseline or not times:
            continue
        ratio = stats.speedup(rows[baseline], times)
        call = (
            "undecided" if not ratio.significant else ("faster" if ratio.ratio > 1.0 else "slower")
        )
        verdicts[name] = Verdict(ratio.ratio, ratio.low, ratio.high, call, call != "undecided")
    return verdicts


def noise_floor(baseline: Sequence[float], control: Sequence[float]) -> float:
    """How far apart two runs of identical work came, as a fraction: the farther end of the
    A/A speedup's interval from 1.00x."""
    ratio = stats.speedup(baseline, control)
    return max(ratio.high - 1.0, 1.0 - ratio.low, 0.0)


def undecided(document: Mapping[str, Any], baseline: str = BASELINE) -> list[str]:
    """The configurations whose comparison with the baseline is not settled yet (every one
    that has timings, when the baseline has none)."""
    rows = run_times(document)
    verdicts = compare(rows, baseline)
    return [
        name
        for name in rows
        if name != baseline and not (name in verdicts and verdicts[name].decided)
    ]


def control_name(baseline: str = BASELINE) -> str:
    return baseline + CONTROL_SUFFIX


def control_summary(document: Mapping[str, Any], baseline: str = BASELINE) -> dict[str, Any] | None:
    """The A/A control as ``results.json`` keeps it: the baseline against its own second row,
    with the noise floor; None until both have at least two finished repeats."""
    rows = run_times(document)
    name = control_name(baseline)
    base, control = rows.get(baseline, []), rows.get(name, [])
    if min(len(base), len(control)) < 2:
        return None
    verdict = compare({baseline: base, name: control}, baseline)[name]
    return {
        "name": name,
        "baseline": baseline,
        "speedup": verdict.speedup,
        "speedup_low": verdict.low,
        "speedup_high": verdict.high,
        "verdict": verdict.verdict,
        "noise_floor": noise_floor(base, control),
        "too_noisy": verdict.verdict in ("faster", "slower"),
    }


def control_notes(document: Mapping[str, Any]) -> list[str]:
    """The lines under the table about the A/A control (none without one)."""
    summary = document.get("control")
    if not isinstance(summary, Mapping) or not isinstance(summary.get("noise_floor"), float):
        return []
    notes = [
        f"A/A control: {summary['name']} is {summary['baseline']} run again as its own "
        f"interleaved row; on this machine identical work differed by up to "
        f"{100 * summary['noise_floor']:.1f}%"
    ]
    if summary.get("too_noisy"):
        notes.append(
            f"WARNING: THE A/A CONTROL CAME OUT {str(summary['verdict']).upper()}: identical work "
            "was called different, so this machine was too noisy to trust the other calls of "
            "this table; rerun on a quieter machine or with more repeats"
        )
    return notes
