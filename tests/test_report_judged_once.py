"""A report judges a run once: ``mpbench report`` (and ``mpbench run``'s own report) compute the
comparisons one time and hand them to the table, its notes, the CSV, the step-time plot and
results.json's ``statistics``, whose contents are what each computed on its own before.
Synthetic results.json documents with repeats, an A/A control and a ``--target``; no training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from run_documents import configuration, fit_result, target_record

import mpcore.report.judging
import mpcore.report.target
from mpcore import report
from mpcore.face.cli import main
from mpcore.names import BASELINE
from mpcore.run.schema import SCHEMA
from mpcore.run.stats import compare_all

OTHER = "mixed_float16+xla_off"
CONTROL = f"{BASELINE} (A/A)"
TIMES = {
    BASELINE: [100.0, 100.4, 99.6, 100.2, 99.8],
    OTHER: [80.9, 81.2, 80.6, 81.0, 80.8],
    CONTROL: [100.1, 99.7, 100.3, 99.9, 100.5],
}


def _document() -> dict[str, Any]:
    def record(name: str, values: list[float]) -> dict[str, Any]:
        result = fit_result(values[-1] * 15 / 1000, values[-1], epochs=3)
        repeats = [
            {
                "repeat": i,
                "status": "ok",
                "ms_per_step": t,
                "target": target_record(i, t * 15 / 1000),
            }
            for i, t in enumerate(values)
        ]
        return configuration(name, result, repeats)

    return {
        "schema": SCHEMA,
        "settings": {"target": "val_accuracy>=0.9"},
        "data": {},
        "configurations": [record(name, values) for name, values in TIMES.items()],
    }


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every family the report module judges, as the names it compares (counted where the
    report calls :func:`mpcore.run.stats.compare_all`)."""
    seen: list[tuple[str, ...]] = []

    def counting(rows, baseline, **options):
        seen.append(tuple(sorted(rows)))
        return compare_all(rows, baseline, **options)

    monkeypatch.setattr(mpcore.report.judging, "compare_all", counting)
    monkeypatch.setattr(mpcore.report.target, "compare_all", counting)
    return seen


def test_mpbench_report_judges_each_family_once(
    calls: list[tuple[str, ...]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_document()))
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    # The steps (with the control) and the times to target: one computation each.
    assert sorted(calls) == [tuple(sorted(TIMES))] * 2
    row = next(line for line in table.splitlines() if line.startswith(OTHER + " "))
    assert " faster " in row and "time to val_accuracy>=0.9" in table
    assert {"results.csv", "step_time.png"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_the_run_s_report_judges_once_and_each_output_reads_the_same_judgement(
    calls: list[tuple[str, ...]], tmp_path: Path
) -> None:
    document = _document()
    judged = report.judge(document, 0.03)  # what mpbench run does once its repeats are done
    statistics = report.run_statistics(document, judged=judged)
    table = report.run_table(document, judged=judged)
    report.render_run(document, tmp_path / "once", judged=judged)
    assert len(calls) == 2  # the steps and the times to target, at judge()

    # The same as each output judging on its own (the behaviour before, the band given).
    assert statistics == report.run_statistics(document, 0.03)
    assert table == report.run_table(document, 0.03)
    report.render_run(document, tmp_path / "alone", 0.03)
    csv = (tmp_path / "once" / "results.csv").read_text()
    assert csv == (tmp_path / "alone" / "results.csv").read_text()
    assert "faster" in csv and "noise floor" in table
    assert statistics["time_to_target"] and statistics["noise_floor"] is not None


def test_a_judgement_decides_over_the_band_it_was_not_made_with() -> None:
    document = _document()
    wide = report.judge(document, 0.5)  # +-50%: a 19% speedup is no practical difference
    assert wide.steps[OTHER].verdict == "no practical difference"
    rows = {row["configuration"]: row for row in report.run_rows(document, 0.03, judged=wide)}
    assert rows[OTHER]["verdict"] == "no practical difference"
    assert "+-50.0%" in report.run_table(document, judged=wide)
