"""``mpbench compare OLD NEW``: what changed between two saved runs, with the noise taken into
account, and an exit status a CI job can gate on.

OLD and NEW are both ``mpbench run`` results (a run folder or its ``results.json``) or both
pytest-benchmark files (a JSON file, or a ``.benchmarks`` folder: its newest file). Each
configuration found in both is one comparison of the same family (:func:`compare_pairs`): the
change of NEW's time against OLD's with its interval and verdict. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

from tabulate import tabulate

from mpcore.face.common import UsageError, float_option
from mpcore.run.stats import (
    ALPHA,
    SLOWER,
    UNDECIDED,
    compare_pairs,
    family_error_rate,
    minimum_repeats,
)

#: A pytest-benchmark row without per-round data: shown, never judged.
NO_DATA = "undecided: no per-round data (save with --benchmark-save-data)"


def band_percent(text: str) -> float:
    """An argparse type: a percentage in [0, 100), as a fraction (``3`` -> ``0.03``)."""
    return float_option(text, lambda value: 0 <= value < 100, "a percentage in 0..100") / 100


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` command to ``subparsers``; its handler is :func:`cmd_compare`."""
    parser = subparsers.add_parser(
        "compare",
        help="what changed between two saved runs or pytest-benchmark files, with intervals",
        description="Compare every configuration of two saved runs (results.json) or two "
        "pytest-benchmark files: the change of NEW's time per step against OLD's, with an "
        "interval that holds for all the comparisons together, and a verdict.",
    )
    parser.add_argument("old", metavar="OLD", help="run folder, results.json, or benchmark JSON")
    parser.add_argument("new", metavar="NEW", help="the same kind of file as OLD")
    parser.add_argument(
        "--band",
        type=band_percent,
        default="3",  # a string, so argparse passes it through the type as it would "--band 3"
        metavar="PCT",
        help="changes within +-PCT percent are no practical difference (default 3)",
    )
    parser.add_argument(
        "--fail-above",
        type=band_percent,
        default="0",
        metavar="PCT",
        help="exit 1 when a configuration is decided slower by more than PCT percent "
        "(default 0: any decided slowdown, which is always beyond the band)",
    )
    parser.set_defaults(handler=cmd_compare)
    return parser


def _samples(path: str, role: str) -> tuple[str, dict[str, list[float] | None], str]:
    """``(kind, name -> times or None when the file holds no per-round data, unit)``."""
    from mpcore import report

    try:
        kind, document, source = report.load(path)
    except report.ReportError as error:
        raise UsageError(f"{role}: {error}") from None
    try:
        if kind == "run":
            times = {
                str(record["name"]): report.repeat_times(record)
                for record in document.get("configurations", [])
            }
            return kind, times, "ms/step"
        rows: dict[str, list[float] | None] = {}
        for bench in document["benchmarks"]:
            name = str(bench.get("fullname") or bench.get("name"))
            data = (bench.get("stats") or {}).get("data")
            # Seconds per round: the change is a ratio, so the unit only needs to agree.
            rows[name] = [1000 * float(t) for t in data] if data else None
        return kind, rows, "ms/round"
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"{role} {source}: a field is missing or malformed ({error})") from None


def _change(ratio: float) -> str:
    """``before / after`` as the relative change of the time: 1.25 -> ``-20.0%``."""
    return f"{1 / ratio - 1:+.1%}" if ratio > 0 and math.isfinite(ratio) else "?"


def cmd_compare(args: argparse.Namespace) -> int:
    old_kind, old, unit = _samples(args.old, "OLD")
    new_kind, new, _ = _samples(args.new, "NEW")
    if old_kind != new_kind:
        raise UsageError(
            f"OLD is a {old_kind} file and NEW a {new_kind} file: compare a run with a run "
            "(results.json) or a pytest-benchmark file with another"
        )
    common = [name for name in old if name in new]
    if not common:
        raise UsageError("OLD and NEW have no configuration in common")
    judged_names = [name for name in common if old[name] and new[name]]
    judged = compare_pairs(
        {name: (old[name], new[name]) for name in judged_names}, alpha=ALPHA, band=args.band
    )
    rows, failing = [], []
    for name in [*common, *(n for n in new if n not in old), *(n for n in old if n not in new)]:
        before, after = old.get(name), new.get(name)
        row = [
            name,
            _median(before),
            _median(after),
        ]
        if name in judged:
            c = judged[name]
            finite = c.low > 0 and math.isfinite(c.high)
            # The interval on the time's change runs the other way round to the speedup's.
            interval = f"{_change(c.high)} to {_change(c.low)}" if finite else "no interval"
            row += [_change(c.speedup), interval, c.verdict]
            if c.verdict == SLOWER and 1 / c.speedup - 1 > args.fail_above:
                failing.append(f"{name} ({_change(c.speedup)})")
        elif name not in old or name not in new:
            row += ["-", "-", f"only in {'NEW' if name not in old else 'OLD'}"]
        elif not before or not after:
            row += ["-", "-", NO_DATA if new_kind == "benchmark" else f"{UNDECIDED}: no times"]
        rows.append(row)
    print(
        tabulate(
            rows,
            headers=[
                "configuration",
                f"OLD {unit}\nmedian (n)",
                f"NEW {unit}\nmedian (n)",
                "change",
                "interval",
                "verdict",
            ],
            tablefmt="simple",
            disable_numparse=True,
        )
    )
    print(_footnote(judged, args.band))
    if failing:
        print(
            f"FAIL: decided slower by more than {args.fail_above:.1%}: " + ", ".join(failing),
            flush=True,
        )
        return 1
    return 0


def _median(values: list[float] | None) -> str:
    return f"{statistics.median(values):.2f} ({len(values)})" if values else "-"


def _footnote(judged: dict[str, Any], band: float) -> str:
    counts = [(c.baseline_count, c.count) for c in judged.values()]
    rate = family_error_rate(counts)
    odds = (
        f"if nothing changed, a false faster/slower among them has probability at most {rate:.1%}"
        if rate > 0 or not counts
        else f"with {min(min(pair) for pair in counts)} repeats no comparison can be decided: "
        f"{len(counts)} need {minimum_repeats(len(counts))} repeats a side"
    )
    return (
        "change: NEW's time against OLD's (negative: NEW is faster), the Hodges-Lehmann "
        "estimate over every pair of repeats; interval: exact distribution-free (Moses) at each "
        f"comparison's Holm level over the {len(judged)} compared; verdict: faster/slower "
        f"beyond +-{band:.1%}, no practical difference inside, undecided otherwise; {odds}. The "
        "runs were not interleaved: a machine that changed between them shows as a change "
        "(compare two runs of the same code to see how much)"
    )
