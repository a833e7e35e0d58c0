"""The benchmark report table: grouping, order, speedups, errors, the pipeline row, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpcore.bench.table import PIPELINE_KIND, render_report, rows_from_saved, training_table

GROUP = "small 32px batch 8 on CPU"


def _row(precision: str, xla: str, ms: float, group: str = GROUP) -> dict:
    return {
        "group": group,
        "precision": precision,
        "xla": xla,
        "model": "small",
        "image_size": 32,
        "batch": 8,
        "ms_per_step": ms,
        "images_per_second": 8000.0 / ms,
        "peak_memory_bytes": 512 * 2**20,
        "achieved_tflops": 0.5,
        "fraction_of_peak": 0.25,
        "compile_seconds": 1.5,
        "note": None,
    }


def _cells(table: str, precision: str, xla: str) -> list[str]:
    for line in table.splitlines():
        cells = line.split()
        if cells[:2] == [precision, xla]:
            return cells
    raise AssertionError(f"no row {precision} {xla} in\n{table}")


def test_speedup_is_over_float32_off_of_the_same_group() -> None:
    table = training_table(
        [
            _row("mixed_float16", "jit", 10.0),
            _row("float32", "jit", 30.0),
            _row("float32", "off", 40.0),
        ]
    )
    lines = [line.split()[:2] for line in table.splitlines()[2:]]
    assert lines == [["float32", "off"], ["float32", "jit"], ["mixed_float16", "jit"]]
    assert _cells(table, "float32", "off")[4] == "1.00x"
    assert _cells(table, "mixed_float16", "jit")[2:8] == [
        "10.00",
        "800.0",
        "4.00x",
        "512",
        "0.500",
        "25.0",
    ]


def test_without_a_float32_off_row_there_is_no_speedup() -> None:
    table = training_table([_row("mixed_float16", "jit", 10.0)])
    assert "x" not in _cells(table, "mixed_float16", "jit")[4]


def test_failed_combination_shows_its_error_and_no_numbers() -> None:
    failed = {
        "group": GROUP,
        "precision": "mixed_float16",
        "xla": "off",
        "error": "ResourceExhaustedError: OOM when allocating tensor",
    }
    table = training_table([_row("float32", "off", 20.0), failed])
    row = next(line for line in table.splitlines() if line.startswith("mixed_float16"))
    assert "ResourceExhaustedError: OOM when allocating tensor" in row
    assert row.split("ResourceExhaustedError")[0].split() == ["mixed_float16", "off"]


def test_report_has_one_table_per_group_and_the_pipeline() -> None:
    pipeline = {
        "kind": PIPELINE_KIND,
        "group": "input pipeline small 32px",
        "model": "small",
        "image_size": 32,
        "batch": 8,
        "images_per_second": 50.0,
        "baseline_images_per_second": 100.0,
        "pipeline_to_baseline": 0.5,
        "target_ratio": 0.85,
    }
    other = "resnet50 224px batch 80 on Tesla T4"
    report = render_report(
        [_row("float32", "off", 20.0), _row("float32", "off", 90.0, group=other), pipeline]
    )
    assert sum(line.startswith("precision") for line in report.splitlines()) == 2
    assert GROUP in report and other in report
    assert "50% (below target)" in report
    assert "input-bound" in report  # 400 images/s of training against 50 delivered


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    document = {
        "machine_info": {},
        "benchmarks": [{"group": GROUP, "extra_info": _row("float32", "off", 20.0)}],
    }
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(document))
    return path


def test_rows_come_back_from_a_saved_file(saved: Path) -> None:
    rows = rows_from_saved(json.loads(saved.read_text()))
    assert rows[0]["group"] == GROUP and rows[0]["ms_per_step"] == 20.0


def test_report_command_prints_the_saved_report(saved: Path, invoke) -> None:
    code, out, _ = invoke(["report", str(saved), "--out", str(saved.parent / "rendered")])
    assert code == 0 and "1.00x" in out


@pytest.mark.parametrize("content", [None, "not json", '{"benchmarks": 3}'])
def test_report_command_rejects_bad_files_in_one_line(
    tmp_path: Path, invoke, content: str | None
) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    code, _, error = invoke(["report", str(path)])
    assert code == 2
    assert error.startswith("mpbench report: error: ") and error.count("\n") == 1
