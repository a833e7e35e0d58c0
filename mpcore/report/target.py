"""The time-to-target table of a run with ``--target``: epochs and seconds to the target quality
per configuration, the speedup in time to target beside the step speedup, and the parity call.

Time to target is compared with the same estimator, interval, Holm correction and band as the
step times (:func:`mpcore.run.stats.compare_all`), over the repeats that each trained with its
own seed. A configuration with a repeat that never reached the target has no time to target
("not reached in k of n"), so it is never shown as fast. The parity column is
:func:`mpcore.run.convergence.epochs_parity`: whether it needs more epochs than the baseline.
No TensorFlow here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

from mpcore.names import BASELINE
from mpcore.run.convergence import epochs_parity
from mpcore.run.stats import BAND, Comparison, compare_all

#: The table's columns: (key, header).
TARGET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("configuration", "configuration"),
    ("reached", "reached"),
    ("epochs_to_target", "epochs to\ntarget"),
    ("time_to_target_s", "time to\ntarget s"),
    ("compile_s", "compile s\n(not timed)"),
    ("time_speedup", "speedup to\ntarget"),
    ("time_verdict", "verdict"),
    ("step_speedup", "step\nspeedup"),
    ("parity", "epochs vs\nbaseline"),
)


def target_runs(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``target`` entries of every finished repeat of a configuration (its one result's
    when the record has no ``repeats``); empty for a failed configuration or a run without
    ``--target``."""
    if record.get("status") != "ok":
        return []
    runs = record.get("repeats")
    if runs is None:
        found = (record.get("result") or {}).get("target")
        return [found] if isinstance(found, Mapping) else []
    return [
        run["target"]
        for run in runs
        if run.get("status") == "ok" and isinstance(run.get("target"), Mapping)
    ]


def has_target(document: Mapping[str, Any]) -> bool:
    return bool((document.get("settings") or {}).get("target"))


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _all_reached(runs: Sequence[Mapping[str, Any]]) -> bool:
    return bool(runs) and all(run.get("reached") for run in runs)


def time_comparisons(document: Mapping[str, Any], band: float = BAND) -> dict[str, Comparison]:
    """Time to target of every configuration whose repeats all reached it, against the
    baseline's (judged as one family); empty when the baseline did not always reach it or
    has fewer than two repeats."""
    rows = {
        record.get("name"): [float(run["seconds"]) for run in target_runs(record)]
        for record in document.get("configurations", [])
        if _all_reached(target_runs(record))
    }
    rows = {name: values for name, values in rows.items() if len(values) >= 2}
    if BASELINE not in rows:
        return {}
    return compare_all(rows, BASELINE, band=band)


def _finite(value: float) -> float | None:
    """A ratio as results.json can hold it: None for an open end (0 or infinity)."""
    return value if 0 < value < math.inf else None


def target_records(
    document: Mapping[str, Any],
    step_comparisons: Mapping[str, Comparison] | None = None,
    band: float = BAND,
    time_judged: Mapping[str, Comparison] | None = None,
) -> list[dict[str, Any]]:
    """One record per configuration with target data, numbers and verdict words only: what
    results.json keeps (``statistics.time_to_target``) and what the table
    (:func:`target_rows`) formats. The time verdicts are ``time_judged`` when the report has
    judged them already (:func:`time_comparisons` at ``band`` otherwise)."""
    records = [r for r in document.get("configurations", []) if target_runs(r)]
    baseline = next((r for r in records if r.get("name") == BASELINE), None)
    base_epochs = [run.get("epochs") for run in target_runs(baseline)] if baseline else []
    judged = time_comparisons(document, band) if time_judged is None else time_judged
    rows = []
    for record in records:
        name = record.get("name")
        runs = target_runs(record)
        reached = [run for run in runs if run.get("reached")]
        is_baseline = name == BASELINE
        time = judged.get(name)
        every = len(reached) == len(runs)  # never a time for one that did not always get there
        step = (step_comparisons or {}).get(name)
        row: dict[str, Any] = {
            "configuration": name,
            "repeats": len(runs),
            "repeats_reached": len(reached),
            "epochs_to_target": _median([float(run["epochs"]) for run in reached]),
            "compile_s": _median(
                [float(run["compile_seconds"]) for run in runs if run.get("compile_seconds")]
            ),
            "seconds_to_target": (
                _median([float(run["seconds"]) for run in reached]) if every else None
            ),
            "speedup_to_target": (
                (1.0 if is_baseline else time.speedup if time else None) if every else None
            ),
            "speedup_to_target_low": _finite(time.low) if every and time else None,
            "speedup_to_target_high": _finite(time.high) if every and time else None,
            "time_verdict": (
                ("baseline" if is_baseline else time.verdict if time else "-")
                if every
                else "not reached"
            ),
            "speedup_per_step": 1.0 if is_baseline else (step.speedup if step else None),
            "epochs_parity": "baseline" if is_baseline else None,
        }
        if not is_baseline and base_epochs:
            parity = epochs_parity(base_epochs, [run.get("epochs") for run in runs])
            row.update(epochs_parity=parity.verdict, parity_p=parity.p_value)
        rows.append(row)
    return rows


def _speedup_text(record: Mapping[str, Any]) -> str:
    if record["configuration"] == BASELINE and record["speedup_to_target"] is not None:
        return "1.00x"
    if record["speedup_to_target"] is None:
        return "-"
    low, high = record["speedup_to_target_low"], record["speedup_to_target_high"]
    interval = f"{low:.2f}-{high:.2f}" if low is not None and high is not None else "no interval"
    return f"{record['speedup_to_target']:.2f}x ({interval})"


def target_rows(
    document: Mapping[str, Any],
    step_comparisons: Mapping[str, Comparison] | None = None,
    band: float = BAND,
    time_judged: Mapping[str, Comparison] | None = None,
) -> list[dict[str, Any]]:
    """The table's rows (see :data:`TARGET_COLUMNS`): :func:`target_records` formatted, the
    only place they are."""
    rows = []
    for record in target_records(document, step_comparisons, band, time_judged):
        is_baseline = record["configuration"] == BASELINE
        runs, reached = record["repeats"], record["repeats_reached"]
        step = record["speedup_per_step"]
        row: dict[str, Any] = {
            "configuration": record["configuration"],
            "reached": f"{reached}/{runs}",
            "epochs_to_target": record["epochs_to_target"],
            "compile_s": record["compile_s"],
            "time_to_target_s": (
                record["seconds_to_target"]
                if reached == runs
                else f"not reached in {runs - reached} of {runs}"
            ),
            "time_speedup": _speedup_text(record),
            "time_verdict": record["time_verdict"],
            "step_speedup": "1.00x" if is_baseline else (f"{step:.2f}x" if step else "-"),
            "parity": record["epochs_parity"] or "-",
        }
        if "parity_p" in record:
            row["parity"] = f"{record['epochs_parity']} (p={record['parity_p']:.2g})"
            row["parity_p"] = record["parity_p"]
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def target_table(
    document: Mapping[str, Any],
    step_comparisons: Mapping[str, Comparison] | None = None,
    band: float = BAND,
    time_judged: Mapping[str, Comparison] | None = None,
) -> str:
    """The time-to-target table with its heading line; empty without ``--target``."""
    rows = target_rows(document, step_comparisons, band, time_judged)
    if not has_target(document) or not rows:
        return ""
    target = document["settings"]["target"]
    heading = (
        f"time to {target} (the clock starts after the first step; training and "
        "validation included; each repeat with its own seed)"
    )
    body = tabulate(
        [[_cell(row.get(key)) for key, _ in TARGET_COLUMNS] for row in rows],
        headers=[header for _, header in TARGET_COLUMNS],
        disable_numparse=True,
    )
    return f"{heading}\n{body}"
