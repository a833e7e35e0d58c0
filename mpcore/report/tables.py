"""The rows and text tables of a ``results.json``: columns, repeats, speedups, machine notes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from mpcore.face.plots import (
    MIB,
)
from mpcore.names import BASELINE
from mpcore.report.judging import (
    Judgement,
    control_notes,
    judge,
    max_repeats,
    repeat_times,
    statistics_note,
)
from mpcore.report.target import has_target, target_table
from mpcore.run.stats import Comparison, spread, spread_warnings
from mpcore.run.store import NO_STEADY_EPOCH, collapse_notes, record_status

#: Columns of the run table and CSV: (key, table header, number format).
RUN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("configuration", "configuration", ""),
    ("status", "status", ""),
    ("first_epoch_s", "first\nepoch s", ".2f"),
    ("steady_epoch_s", "steady\nepoch s", ".2f"),
    ("ms_per_step", "ms/step", ".1f"),
    ("images_per_s", "images/s", ".1f"),
    ("speedup", "speedup", "x"),
    ("final_loss", "final\nloss", ".4f"),
    ("accuracy", "accuracy", ".3f"),
    ("val_accuracy", "val\naccuracy", ".3f"),
    ("peak_memory_mib", "peak mem\nMiB", ".0f"),
    ("final_loss_scale", "final loss\nscale", "g"),
)


#: Extra columns of a run under a tf.distribute strategy (``mpbench run --strategy``).
SCALING_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("replicas", "replicas", "d"),
    ("global_batch", "global\nbatch", "d"),
    ("images_per_s_per_replica", "images/s\nper replica", ".1f"),
    ("scaling_efficiency", "scaling\neffic.", ".0%"),
)


#: Extra CSV columns of a run with repeats (``mpbench run --repeats N``), full precision.
REPEAT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("repeats", "repeats", "d"),
    ("ms_per_step_min", "min\nms/step", ".1f"),
    ("ms_per_step_max", "max\nms/step", ".1f"),
    ("speedup_low", "speedup\nlow", "x"),
    ("speedup_high", "speedup\nhigh", "x"),
    ("verdict", "verdict", ""),
)


#: The run table's ms/step and speedup columns when configurations were repeated: the median
#: with its min-max, the speedup with its interval, and its verdict (:mod:`mpcore.run.stats`).
REPEATED_TABLE: dict[str, tuple[tuple[str, str, str], ...]] = {
    "ms_per_step": (("ms_per_step_range", "ms/step median\n(min-max)", ""),),
    "speedup": (
        ("speedup_range", "speedup\n(interval)", ""),
        ("verdict", "verdict", ""),
    ),
}


def _last(values: Sequence[float] | None) -> float | None:
    return values[-1] if values else None


def peak_memory(record: dict[str, Any]) -> tuple[float | None, str]:
    """Peak memory of a configuration in bytes and what it measures (GPU or host RSS)."""
    telemetry = record.get("telemetry") or {}
    if telemetry.get("tf_peak_memory_bytes") is not None:
        return telemetry["tf_peak_memory_bytes"], "TensorFlow peak GPU memory"
    if telemetry.get("backend_peak_memory_bytes") is not None:
        versions = ((record.get("result") or {}).get("machine") or {}).get("versions") or {}
        return telemetry["backend_peak_memory_bytes"], f"{versions.get('backend')} peak GPU memory"
    if telemetry.get("peak_rss_bytes") is not None:
        return telemetry["peak_rss_bytes"], "peak host RSS of the worker process"
    return None, "unknown"


def is_distributed(document: dict[str, Any]) -> bool:
    """Whether a run trained configurations under a tf.distribute strategy."""
    return any(
        (record.get("config") or {}).get("strategy", "none") != "none"
        for record in document.get("configurations", [])
    )


def run_columns(document: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """The run table's columns: the scaling ones too when the run was distributed; with
    repeats, the ms/step and speedup with their spread (:data:`REPEATED_TABLE`)."""
    columns = RUN_COLUMNS + SCALING_COLUMNS if is_distributed(document) else RUN_COLUMNS
    if max_repeats(document) > 1:
        columns = tuple(c for column in columns for c in REPEATED_TABLE.get(column[0], (column,)))
    return columns


def csv_columns(document: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """The CSV's columns: the table's numbers, plus every repeat figure when repeated."""
    columns = RUN_COLUMNS + SCALING_COLUMNS if is_distributed(document) else RUN_COLUMNS
    return columns + REPEAT_COLUMNS if max_repeats(document) > 1 else columns


def run_rows(
    document: dict[str, Any], band: float | None = None, judged: Judgement | None = None
) -> list[dict[str, Any]]:
    """One row per configuration, in run order, with the table's values (None = unknown);
    the verdicts ``judged``'s when the report has judged the run already (``band`` then
    unused)."""
    comparisons = (judged or judge(document, band)).steps
    records = document.get("configurations", [])
    baseline = next(
        (r for r in records if r.get("name") == BASELINE and r.get("status") == "ok"), None
    )
    base_times = repeat_times(baseline) if baseline else []
    base_ms = spread(base_times).median if base_times else None
    rows = []
    for record in records:
        row: dict[str, Any] = dict.fromkeys(
            key
            for columns in (RUN_COLUMNS, SCALING_COLUMNS, REPEAT_COLUMNS)
            for key, _, _ in columns
        )
        row["configuration"] = record.get("name")
        ok = record.get("status") == "ok"
        row["status"] = record_status(record)
        if ok:
            result = record["result"]
            memory, _ = peak_memory(record)
            row.update(
                first_epoch_s=result["first_epoch_seconds"],
                steady_epoch_s=result["steady_epoch_seconds"],
                ms_per_step=result["ms_per_step"],
                images_per_s=result["images_per_second"],
                speedup=base_ms / result["ms_per_step"] if base_ms else None,
                final_loss=_last(result["loss"]),
                accuracy=_last(result["accuracy"]),
                val_accuracy=_last(result["val_accuracy"]),
                peak_memory_mib=memory / MIB if memory is not None else None,
                final_loss_scale=_last(result.get("loss_scale")),
                replicas=result.get("replicas", 1),
                global_batch=result.get("global_batch")
                or (result.get("settings") or {}).get("batch_size"),
                images_per_s_per_replica=result["images_per_second"] / result.get("replicas", 1),
                scaling_efficiency=(record.get("scaling") or {}).get("scaling_efficiency"),
            )
            _add_repeats(row, repeat_times(record))
            _add_comparison(row, comparisons.get(record.get("name")), record is baseline)
        rows.append(row)
    return rows


def _add_repeats(row: dict[str, Any], times: list[float]) -> None:
    """Put the median over repeats (and what follows from it) and the spread in ``row``."""
    if len(times) < 2:
        return
    middle = spread(times)
    scale = middle.median / row["ms_per_step"]  # the latest repeat's steady epoch to the median
    row.update(
        ms_per_step=middle.median,
        steady_epoch_s=row["steady_epoch_s"] * scale,
        images_per_s=row["images_per_s"] / scale,
        images_per_s_per_replica=row["images_per_s_per_replica"] / scale,
        repeats=middle.count,
        ms_per_step_min=middle.low,
        ms_per_step_max=middle.high,
        ms_per_step_range=f"{middle.median:.1f} ({middle.low:.1f}-{middle.high:.1f})",
    )


def _add_comparison(row: dict[str, Any], judged: Comparison | None, is_baseline: bool) -> None:
    """The speedup, its interval and verdict: 1.00x exactly for the baseline itself."""
    if is_baseline:
        row.update(speedup=1.0, speedup_range="1.00x", verdict="baseline")
    elif judged is not None:
        finite = judged.low > 0 and math.isfinite(judged.high)
        interval = f"{judged.low:.2f}-{judged.high:.2f}" if finite else "no interval"
        row.update(
            speedup=judged.speedup,
            speedup_low=judged.low if finite else None,
            speedup_high=judged.high if finite else None,
            speedup_range=f"{judged.speedup:.2f}x ({interval})",
            verdict=judged.verdict,
        )


def benchmark_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The training rows (``extra_info``) of a pytest-benchmark file, with the speedup over
    ``float32``/``off`` of the same group, as the benchmark suite's own table computes it."""
    from mpcore.bench.table import PIPELINE_KIND, rows_from_saved, with_speedups

    return with_speedups([r for r in rows_from_saved(document) if r.get("kind") != PIPELINE_KIND])


#: Columns of any pytest-benchmark file's table and CSV (times in seconds, as the file has them).
PLAIN_BENCHMARK_COLUMNS = ("name", "group", "median_s", "iqr_s", "rounds")


def is_suite_benchmark(document: dict[str, Any]) -> bool:
    """Whether every benchmark of a pytest-benchmark file is one of mpbench's own suite (its
    ``extra_info`` holds a training row or an input-pipeline row); any other file is shown as
    pytest-benchmark's own figures (:func:`plain_benchmark_rows`)."""
    return all(
        {"precision", "kind"} & set(bench.get("extra_info") or {})
        for bench in document.get("benchmarks", [])
    )


def plain_benchmark_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark of a pytest-benchmark file: its name, group and the median,
    interquartile range (seconds) and rounds of its ``stats`` (None where the file has none)."""
    rows = []
    for bench in document.get("benchmarks", []):
        stats = bench.get("stats") or {}
        rows.append(
            {
                "name": bench.get("name") or bench.get("fullname"),
                "group": bench.get("group"),
                "median_s": stats.get("median"),
                "iqr_s": stats.get("iqr"),
                "rounds": stats.get("rounds"),
            }
        )
    return rows


#: Time units of the plain benchmark table, largest first: (name, seconds).
TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))


def magnitude(value: float) -> int:
    """The decimal exponent of ``value`` (0 for 0: 1 digit before the point)."""
    return math.floor(math.log10(abs(value))) if value else 0


def plain_benchmark_table(rows: list[dict[str, Any]]) -> str:
    """The table of :func:`plain_benchmark_rows` (tabulate), its times in the unit that suits
    the fastest median, as pytest-benchmark's own table chooses one."""
    medians = [row["median_s"] for row in rows if row["median_s"]]
    unit, scale = next(
        ((name, size) for name, size in TIME_UNITS if min(medians, default=1.0) >= size),
        TIME_UNITS[-1],
    )
    columns = (
        ("name", "name", ""),
        ("group", "group", ""),
        ("median", f"median ({unit})", ">"),
        ("iqr", f"IQR ({unit})", ">"),
        ("rounds", "rounds", "d"),
    )

    def time(seconds: float | None) -> str | None:
        # four significant digits without an exponent (12345 ns stays whole), but an absurd
        # time (1e308 s in ns) as an exponent rather than 300 digits
        if seconds is None:
            return None
        value = seconds / scale
        if not math.isfinite(value) or abs(value) >= 1e15:
            return f"{value:.4g}"
        return f"{value:.{max(0, 3 - magnitude(value))}f}"

    scaled = [{**row, "median": time(row["median_s"]), "iqr": time(row["iqr_s"])} for row in rows]
    return format_table(scaled, columns)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if fmt == "d":
        return str(int(value))
    if fmt == "x":
        return f"{value:.2f}x"
    return format(value, fmt) if fmt else str(value)


def format_table(
    rows: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...] = RUN_COLUMNS
) -> str:
    """A plain-text table (tabulate) of ``rows``; long failure reasons wrap."""
    body = [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    widths = [48 if key == "status" else None for key, _, _ in columns]
    return tabulate(
        body,
        headers=[header for _, header, _ in columns],
        tablefmt="simple",
        disable_numparse=True,
        maxcolwidths=widths,
        colalign=["left" if not fmt else "right" for _, _, fmt in columns],
    )


#: The table's cells that a run without a steady epoch (``--epochs 1``) has no figure for.
STEADY_CELLS = ("steady_epoch_s", "ms_per_step", "ms_per_step_range", "images_per_s")


def has_no_steady_epoch(record: dict[str, Any]) -> bool:
    """Whether an ``ok`` record trained one epoch only, so its steady figures are the first's."""
    result = record.get("result") or {}
    steady = result.get("steady")
    if isinstance(steady, str):
        return steady.startswith(NO_STEADY_EPOCH)
    return isinstance(result.get("epoch_seconds"), list) and len(result["epoch_seconds"]) < 2


def run_table(
    document: dict[str, Any], band: float | None = None, judged: Judgement | None = None
) -> str:
    """The run table plus a footnote saying what speedup and peak memory mean, and under it
    the A/A control's noise floor and the warnings on the repeats' spread (the run judged once,
    or ``judged`` when the report has judged it already)."""
    judged = judged or judge(document, band)
    rows = run_rows(document, judged=judged)
    unsteady = {
        record.get("name")
        for record in document.get("configurations", [])
        if record.get("status") == "ok" and has_no_steady_epoch(record)
    }
    shown = [
        {**row, **dict.fromkeys(STEADY_CELLS, NO_STEADY_EPOCH)}
        if row["configuration"] in unsteady
        else row
        for row in rows
    ]
    table = format_table(shown, run_columns(document))
    kinds = {peak_memory(r)[1] for r in document.get("configurations", []) if r.get("result")}
    notes = [
        "ms/step: steady model.fit epochs (after the first) / steps per epoch, the whole fit "
        "step (metrics, callbacks, input pipeline) included",
        f"speedup: steady ms/step of {BASELINE} divided by each configuration's",
    ]
    notes.append(
        "these are whole-epoch ratios (fit epochs, input pipeline included); mpbench doctor "
        "--measure gives kernel ratios, pytest benchmarks/ train-step ratios (docs/statistics.md)"
    )
    settings = document.get("settings") or {}
    if settings.get("model"):  # a user's model is named by its spec
        size = f", {settings['image_size']} px" if settings.get("image_size") else ""
        notes.append(f"model: {settings['model']}{size}, batch {settings.get('batch_size')}")
    repeats = max_repeats(document)
    if repeats > 1:
        notes[0] += (
            f"; the median (min-max) over up to {repeats} repeats of each configuration, run "
            "interleaved after an untimed warm-up"
        )
        notes[1] = statistics_note(judged)
    elif repeats == 1 and len(document.get("configurations", [])) > 1:
        notes.append(
            "each configuration ran once: a speedup has no interval and on a busy machine may be "
            "noise (mpbench run --repeats N)"
        )
    if kinds:
        notes.append(f"peak memory: {', '.join(sorted(kinds))}")
    if is_distributed(document):
        notes.append(
            "scaling efficiency: images/s / (replicas x images/s of the same configuration "
            "without a strategy, one replica, in this run); 100% is linear scaling"
        )
    if unsteady:
        notes.append(
            f"{NO_STEADY_EPOCH} ({', '.join(sorted(unsteady))}): one epoch only, which includes "
            "tracing and compilation, so there is no steady ms/step; speedups compare those "
            "first epochs (train 2 epochs or more for steady figures)"
        )
    notes += collapse_notes(document) + machine_notes(document.get("machine") or {})
    notes.extend(control_notes(judged))
    notes.extend(f"warning: {line}" for line in spread_warnings(judged.repeated))
    text = table + "\n" + "\n".join(notes)
    if has_target(document):
        text += "\n\n" + target_table(document, judged.steps, judged.band, judged.to_target)
    return text


def machine_notes(machine: dict[str, Any]) -> list[str]:
    """What the recorded machine means for the figures: a simulated GPU, float32 as TF32."""
    notes = []
    if machine.get("gpu_simulated"):
        notes.append(
            "gpu simulated (MPBENCH_FAKE_GPU): the decisions followed the simulated GPU; the "
            "timings are the real devices'"
        )
    capabilities = [float(g.get("compute_capability") or 0) for g in machine.get("gpus", [])]
    if machine.get("tf32_enabled") and any(cc >= 8.0 for cc in capabilities):
        notes.append(
            "float32: ran as TF32 on tensor cores (TensorFlow's default on compute capability "
            "8.0+); its speedup baseline is TF32, not full float32"
        )
    return notes
