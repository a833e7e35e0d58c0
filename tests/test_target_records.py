"""``statistics.time_to_target`` in results.json holds numbers (seconds, epochs, ratios and their
interval), formatted only by the time-to-target table; a file written before, whose rows hold
the table's formatted cells, still passes the schema and re-renders. No training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from run_documents import configuration, fit_result, target_record

from mpcore import report
from mpcore.face.cli import main
from mpcore.names import BASELINE
from mpcore.report.target import target_records, target_rows
from mpcore.run.schema import SCHEMA, check_results

QUICK = "mixed_bfloat16+xla_off"
NEVER = "amp_rewrite+xla_off"


def _document() -> dict[str, Any]:
    """A ``--target`` run of 5 repeats: the baseline reaches it in 3 epochs of 10 s, ``QUICK``
    in 3 epochs of 5 s, ``NEVER`` in 1 repeat of 5."""

    def record(name: str, epoch_seconds: float, reached: list[bool]) -> dict[str, Any]:
        result = fit_result(epoch_seconds, epoch_seconds * 100, epochs=3)
        runs = [
            {
                "repeat": i,
                "status": "ok",
                "ms_per_step": epoch_seconds * 100 * (1 + i / 200),
                "target": target_record(i, epoch_seconds, hit),
            }
            for i, hit in enumerate(reached)
        ]
        return configuration(name, result, runs)

    return {
        "schema": SCHEMA,
        "status": "complete",
        "settings": {"target": "val_accuracy>=0.9"},
        "data": {},
        "configurations": [
            record(BASELINE, 10.0, [True] * 5),
            record(QUICK, 5.0, [True] * 5),
            record(NEVER, 5.0, [True, False, False, False, False]),
        ],
    }


def test_results_json_keeps_numbers_and_the_table_formats_them() -> None:
    document = _document()
    stored = {
        row["configuration"]: row for row in report.run_statistics(document)["time_to_target"]
    }
    assert stored[BASELINE]["speedup_to_target"] == stored[BASELINE]["speedup_per_step"] == 1.0
    quick = stored[QUICK]
    assert (quick["repeats"], quick["repeats_reached"], quick["epochs_to_target"]) == (5, 5, 3.0)
    assert quick["seconds_to_target"] == pytest.approx(15.3)  # the median repeat's 3 x 5.1 s
    assert quick["speedup_to_target"] == pytest.approx(2.0)
    low, high = quick["speedup_to_target_low"], quick["speedup_to_target_high"]
    assert 1.9 < low < 2.0 < high < 2.1
    assert quick["time_verdict"] == "faster" and quick["speedup_per_step"] == pytest.approx(2.0)
    assert quick["epochs_parity"] == "no more epochs" and 0 < quick["parity_p"] <= 1
    never = stored[NEVER]
    assert never["seconds_to_target"] is None and never["speedup_to_target"] is None
    assert never["time_verdict"] == "not reached" and never["repeats_reached"] == 1
    # Every value is a number or null but the name and the verdict words: nothing formatted.
    for row in stored.values():
        words = {key for key, value in row.items() if isinstance(value, str)}
        assert words <= {"configuration", "time_verdict", "epochs_parity"}, row
        assert not any(char in row[key] for key in words - {"configuration"} for char in "(x=")
    check_results({**document, "statistics": report.run_statistics(document)})

    rows = {
        row["configuration"]: row for row in target_rows(document, report.judge(document).steps)
    }
    assert rows[QUICK]["time_speedup"] == f"2.00x ({low:.2f}-{high:.2f})"
    assert rows[QUICK]["reached"] == "5/5" and rows[QUICK]["step_speedup"] == "2.00x"
    assert rows[QUICK]["parity"] == f"no more epochs (p={quick['parity_p']:.2g})"
    assert rows[NEVER]["time_to_target_s"] == "not reached in 4 of 5"
    assert rows[BASELINE]["time_speedup"] == "1.00x" and rows[BASELINE]["parity"] == "baseline"
    assert target_records(document) == target_records(document, {}, 0.03)


def test_a_file_with_the_old_formatted_rows_is_still_read_and_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document()
    old = {
        "configuration": QUICK,
        "reached": "5/5",
        "epochs_to_target": 3.0,
        "compile_s": 2.0,
        "time_to_target_s": 15.3,
        "time_speedup": "2.00x (1.96-2.04)",
        "time_verdict": "faster",
        "step_speedup": "2.00x",
        "parity": "no more epochs (p=1)",
        "parity_p": 1.0,
    }
    document["statistics"] = {**report.run_statistics(document), "time_to_target": [old]}
    check_results(document)  # the old keys are no longer described, and still allowed
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    line = next(line for line in table.splitlines() if line.split()[:2] == [QUICK, "5/5"])
    assert " faster " in line and "2.00x (" in line
