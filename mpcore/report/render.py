"""Writing a report's files: the CSV, the step-time plot, and everything for a run or a
pytest-benchmark file (the figures themselves are drawn by :mod:`mpcore.face.plots`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mpcore.face.plots import (
    plot_bars,
    plot_curves,
    plot_gpu_telemetry,
    plot_time_vs_loss,
    subtitle,
)
from mpcore.names import BASELINE
from mpcore.report.judging import Judgement, judge, repeat_times
from mpcore.report.load import ReportError
from mpcore.report.tables import (
    PLAIN_BENCHMARK_COLUMNS,
    RUN_COLUMNS,
    benchmark_rows,
    csv_columns,
    is_suite_benchmark,
    plain_benchmark_rows,
    plain_benchmark_table,
    run_rows,
)


def write_csv(
    rows: list[dict[str, Any]],
    path: Path,
    columns: tuple[tuple[str, str, str], ...] = RUN_COLUMNS,
) -> Path:
    """Write ``rows`` with full-precision numbers (empty cell = unknown)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([key for key, _, _ in columns])
        for row in rows:
            writer.writerow(["" if row.get(key) is None else row[key] for key, _, _ in columns])
    return path


def step_time_data(
    document: dict[str, Any], band: float | None = None, judged: Judgement | None = None
) -> list[dict[str, Any]]:
    """What ``step_time.png`` draws, one entry per configuration with a time: its label, the
    bar (the table's ms/step), the speedup and its interval (the table's), and every repeat's
    ms/step as points. The table's own rows, as ``results.csv``'s, so the three cannot
    disagree (``judged``: the report's judgement of the run, made once)."""
    records = {record.get("name"): record for record in document.get("configurations", [])}
    data = []
    for row in run_rows(document, band, judged):
        if row["ms_per_step"] is None:
            continue
        low, high = row.get("speedup_low"), row.get("speedup_high")
        data.append(
            {
                "configuration": row["configuration"],
                "ms_per_step": row["ms_per_step"],
                "speedup": row["speedup"],
                "interval": (low, high) if low is not None and high is not None else None,
                "repeats": repeat_times(records[row["configuration"]]),
            }
        )
    return data


def plot_step_time(
    document: dict[str, Any],
    path: Path,
    band: float | None = None,
    judged: Judgement | None = None,
) -> Path:
    """Steady-state ms/step per configuration (the median over repeats, each repeat a dot),
    annotated with the table's speedup over the baseline and its interval."""
    data = step_time_data(document, band, judged)
    return plot_bars(
        [entry["configuration"] for entry in data],
        [entry["ms_per_step"] for entry in data],
        [entry["speedup"] for entry in data],
        path,
        f"Steady training step time (speedup over {BASELINE})\n{subtitle(document)}",
        "milliseconds per training step (median of epochs after the first; of repeats: median)",
        points=[entry["repeats"] for entry in data],
        intervals=[entry["interval"] for entry in data],
    )


def render_run(
    document: dict[str, Any],
    out: Path,
    band: float | None = None,
    judged: Judgement | None = None,
) -> list[Path]:
    """Write ``results.csv`` and the PNG plots of a run into ``out``; return the files
    (``band``: the verdicts' band instead of the run's own; ``judged``: the report's judgement
    of the run when it has one, which then decides)."""
    out.mkdir(parents=True, exist_ok=True)
    judged = judged or judge(document, band)
    written = [
        write_csv(run_rows(document, judged=judged), out / "results.csv", csv_columns(document)),
        plot_time_vs_loss(document, out / "time_vs_loss.png"),
        plot_curves(document, out / "curves.png"),
        plot_step_time(document, out / "step_time.png", judged=judged),
    ]
    gpu = plot_gpu_telemetry(document, out / "gpu_telemetry.png")
    return [*written, *([gpu] if gpu else [])]


def render_benchmark(document: dict[str, Any], out: Path) -> tuple[str, list[Path]]:
    """The benchmark suite's table of a pytest-benchmark file, and its CSV and step-time plot
    written to ``out``; for a file of any other project's benchmarks, pytest-benchmark's own
    figures (name, group, median, IQR, rounds) and their CSV."""
    from mpcore.bench.table import render_report, rows_from_saved

    out.mkdir(parents=True, exist_ok=True)
    if not is_suite_benchmark(document):
        plain = plain_benchmark_rows(document)
        if all(row["median_s"] is None for row in plain):
            raise ReportError("no benchmark in this pytest-benchmark file has stats.median")
        columns = tuple((key, key, "") for key in PLAIN_BENCHMARK_COLUMNS)
        return plain_benchmark_table(plain), [write_csv(plain, out / "benchmark.csv", columns)]
    rows = benchmark_rows(document)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / "benchmark.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    timed = [row for row in rows if row.get("ms_per_step")]
    groups = list(dict.fromkeys(str(row.get("group")) for row in timed))
    one_group = len(groups) == 1

    def label(row: dict[str, Any]) -> str:
        name = f"{row.get('precision')}+xla_{row.get('xla')}"
        return name if one_group else f"{row.get('group')}\n{name}"

    plot = plot_bars(
        [label(row) for row in timed],
        [row["ms_per_step"] for row in timed],
        [row["speedup"] for row in timed],
        out / "benchmark_step_time.png",
        "pytest-benchmark: training step time"
        + (f", {groups[0]}" if one_group else "")
        + "\n(speedup over float32 with XLA off, same group)",
        "milliseconds per training step",
    )
    return render_report(rows_from_saved(document)), [out / "benchmark.csv", plot]
