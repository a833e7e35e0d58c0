"""The benchmark report: one table per model/batch/size/device/step, rows precision x XLA.

Rows are the ``extra_info`` records the ``benchmarks/`` suite stores (plus ``group`` and, for a
failed combination, ``error``); ``step`` names the step timed (``fit``: Keras's train function,
``custom``: mpcore's own). Speedups are over ``float32``/``off`` of the same group in the
same run, never across runs (``pytest --benchmark-compare`` does that). ``mpbench report
SAVED.json`` reprints the report of a saved pytest-benchmark file. No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tabulate import tabulate

from mpcore.names import BASELINE_PRECISION, BASELINE_XLA, PRECISIONS, XLA_MODES

TRAINING_HEADERS = (
    "precision",
    "xla",
    "step",
    "backend",
    "ms/step",
    "images/s",
    "speedup",
    "peak memory MiB",
    "TFLOP/s",
    "% of peak",
    "compile s",
    "note",
)
PIPELINE_HEADERS = ("input pipeline", "images/s", "raw decode+resize images/s", "ratio", "target")
PIPELINE_KIND = "input_pipeline"


def _order(row: dict[str, Any]) -> tuple[int, int, str]:
    precision, xla = row.get("precision"), row.get("xla")
    return (
        PRECISIONS.index(precision) if precision in PRECISIONS else len(PRECISIONS),
        XLA_MODES.index(xla) if xla in XLA_MODES else len(XLA_MODES),
        row.get("backend") or "",
    )


def _number(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "" if value is None else f"{value * scale:.{digits}f}"


def with_speedups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``speedup``: the ms/step of the group's float32/off row (same
    group, same Keras backend, same run) over the row's; None where either is missing or the row
    failed."""
    baselines = {
        (row.get("group"), row.get("backend")): row["ms_per_step"]
        for row in rows
        if row.get("precision") == BASELINE_PRECISION
        and row.get("xla") == BASELINE_XLA
        and "error" not in row
        and row.get("ms_per_step")
    }
    speeded = []
    for row in rows:
        base, ms = baselines.get((row.get("group"), row.get("backend"))), row.get("ms_per_step")
        ok = base and ms and "error" not in row
        speeded.append({**row, "speedup": base / ms if ok else None})
    return speeded


#: Marks a peak memory that cannot be compared with the other rows' (a session's RSS peak).
SESSION_MEMORY_MARK = " *"
SESSION_MEMORY_NOTE = (
    "* peak memory: the pytest process's peak RSS so far, which only grows down the rows: not "
    "comparable between rows (pytest --mp-memory fresh measures each row in its own process)"
)


def _memory_mark(row: dict[str, Any]) -> str:
    """:data:`SESSION_MEMORY_MARK` for a row whose peak memory is a session's RSS peak, not
    comparable with the other rows (files saved before ``peak_memory_comparable`` included)."""
    if row.get("peak_memory_bytes") is None:
        return ""
    comparable = row.get("peak_memory_comparable")
    if comparable is None:
        comparable = row.get("peak_memory_source") != "process_rss"
    return "" if comparable else SESSION_MEMORY_MARK


def training_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table of one group; speedup is float32/off's ms/step over the row's."""
    lines = []
    for row in sorted(with_speedups(rows), key=_order):
        ms = row.get("ms_per_step")
        speedup = row["speedup"]
        memory = row.get("peak_memory_bytes")
        note = row.get("error") or row.get("note") or ""
        lines.append(
            (
                row.get("precision", "?"),
                row.get("xla", "?"),
                row.get("step", ""),
                row.get("backend") or "",
                "" if "error" in row else _number(ms),
                "" if "error" in row else _number(row.get("images_per_second"), digits=1),
                "" if speedup is None else f"{speedup:.2f}x",
                "" if "error" in row else _number(memory, 1 / 2**20, 0) + _memory_mark(row),
                "" if "error" in row else _number(row.get("achieved_tflops"), digits=3),
                "" if "error" in row else _number(row.get("fraction_of_peak"), 100.0, 1),
                _number(row.get("compile_seconds"), digits=1),
                note,
            )
        )
    return tabulate(
        lines,
        headers=TRAINING_HEADERS,
        disable_numparse=True,
        colalign=("left", "left", "left", "left", *["right"] * 7, "left"),
    )


def pipeline_table(rows: Sequence[dict[str, Any]]) -> str:
    """Input-pipeline rate next to the raw decode+resize baseline of the same run."""
    lines = [
        (
            f"{row['model']} {row['image_size']}px batch {row['batch']}",
            _number(row["images_per_second"], digits=1),
            _number(row["baseline_images_per_second"], digits=1),
            f"{row['pipeline_to_baseline']:.0%}"
            + (" (below target)" if row["pipeline_to_baseline"] < row["target_ratio"] else ""),
            f">= {row['target_ratio']:.0%}",
        )
        for row in rows
    ]
    return tabulate(
        lines, headers=PIPELINE_HEADERS, disable_numparse=True, colalign=("left", *["right"] * 4)
    )


def _input_bound_notes(groups: dict[str, list[dict]], pipelines: Sequence[dict]) -> list[str]:
    notes = []
    for pipeline in pipelines:
        for name, rows in groups.items():
            rates = [r["images_per_second"] for r in rows if r.get("images_per_second")]
            same_input = all(
                rows[0].get(key) == pipeline.get(key) for key in ("model", "image_size", "batch")
            )
            if rates and same_input and max(rates) > pipeline["images_per_second"]:
                notes.append(
                    f"{name}: the fastest mode trains {max(rates):.0f} images/s but the input "
                    f"pipeline delivers {pipeline['images_per_second']:.0f}: input-bound"
                )
    return notes


def render_report(rows: Iterable[dict[str, Any]]) -> str:
    """All tables: one per training group, then the input pipeline."""
    groups: dict[str, list[dict[str, Any]]] = {}
    pipelines = []
    for row in rows:
        if row.get("kind") == PIPELINE_KIND:
            pipelines.append(row)
        else:
            groups.setdefault(row.get("group") or "ungrouped", []).append(row)
    parts = [f"{name}\n{training_table(group)}" for name, group in sorted(groups.items())]
    if pipelines:
        parts.append(pipeline_table(pipelines))
    parts.extend(_input_bound_notes(groups, pipelines))
    if any(_memory_mark(row) for group in groups.values() for row in group):
        parts.append(SESSION_MEMORY_NOTE)
    if groups:
        parts.append(
            "speedup: train-step ratios (the compiled step on one resident batch, no input "
            "pipeline); mpbench run gives whole-epoch ratios, mpbench doctor --measure kernel "
            "ratios (docs/statistics.md)"
        )
    return "\n\n".join(parts)


def rows_from_saved(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Report rows from a pytest-benchmark JSON file (failed combinations are not saved)."""
    return [
        {"group": bench.get("group"), **bench.get("extra_info", {})}
        for bench in document.get("benchmarks", [])
    ]
