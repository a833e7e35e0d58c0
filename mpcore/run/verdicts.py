"""What the run itself decides from its timings while it runs: which comparisons with the
baseline are still undecided (``--repeats auto`` adds rounds until none is). The statistics are
:func:`mpcore.run.stats.compare_all`'s, the same the table's verdicts come from; this module only
gathers a run's times and asks, in one place. No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mpcore.names import BASELINE
from mpcore.run import stats


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


def undecided(
    document: Mapping[str, Any], band: float = stats.BAND, baseline: str = BASELINE
) -> list[str]:
    """The configurations whose comparison with the baseline is not decided yet, judged as the
    table will judge them (every one with timings, while the baseline has fewer than two)."""
    rows = {name: times for name, times in run_times(document).items() if times}
    others = [name for name in rows if name != baseline]
    if len(rows.get(baseline, [])) < 2:
        return others
    judged = stats.compare_all(rows, baseline, band=band)
    return [name for name in others if not (name in judged and judged[name].decided)]
