"""Tables, CSV and plots of a saved ``results.json`` or a pytest-benchmark JSON file.

``import mpcore.report`` imports no TensorFlow: ``mpbench report`` re-renders a saved run in a
second. Reading the file is :mod:`~mpcore.report.load`, the rows and tables
:mod:`~mpcore.report.tables` (the verdicts :mod:`~mpcore.report.judging`), the files written
:mod:`~mpcore.report.render`.
"""

from mpcore.report.judging import Judgement, judge, repeat_times, run_statistics
from mpcore.report.load import ReportError, is_benchmark_json, is_results_json, load, locate
from mpcore.report.render import plot_step_time, render_benchmark, render_run, write_csv
from mpcore.report.tables import (
    REPEAT_COLUMNS,
    RUN_COLUMNS,
    SCALING_COLUMNS,
    benchmark_rows,
    csv_columns,
    format_table,
    machine_notes,
    peak_memory,
    run_columns,
    run_rows,
    run_table,
)

__all__ = [
    "REPEAT_COLUMNS",
    "RUN_COLUMNS",
    "SCALING_COLUMNS",
    "Judgement",
    "ReportError",
    "benchmark_rows",
    "csv_columns",
    "format_table",
    "is_benchmark_json",
    "is_results_json",
    "judge",
    "load",
    "locate",
    "machine_notes",
    "peak_memory",
    "plot_step_time",
    "render_benchmark",
    "render_run",
    "repeat_times",
    "run_columns",
    "run_rows",
    "run_statistics",
    "run_table",
    "write_csv",
]
