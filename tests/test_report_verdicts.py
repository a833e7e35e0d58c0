"""The run table's verdicts as ``mpbench run`` and ``mpbench report`` print them: the band a run
recorded and ``report --band``, the A/A control's noise floor and its alarm, the spread warnings,
and the ``statistics`` block of results.json. Synthetic results.json documents, no training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from run_documents import configuration, fit_result

from mpcore import report
from mpcore.face.cli import main
from mpcore.names import BASELINE
from mpcore.run.schema import SCHEMA

OTHER = "mixed_bfloat16+xla_off"
CONTROL = f"{BASELINE} (A/A)"


def _document(times: dict[str, list[float]], band: float | None = None) -> dict[str, Any]:
    def record(name: str, values: list[float]) -> dict[str, Any]:
        result = fit_result(values[-1] * 15 / 1000, values[-1], epochs=2)
        repeats = [{"repeat": i, "status": "ok", "ms_per_step": t} for i, t in enumerate(values)]
        return configuration(name, result, repeats)

    document: dict[str, Any] = {
        "schema": SCHEMA,
        "settings": {},
        "data": {},
        "configurations": [record(name, values) for name, values in times.items()],
    }
    if band is not None:
        document["statistics"] = {"band": band}
    return document


#: A steady 10% speedup measured tightly: faster beyond a 3% band, inside a 20% one.
TEN_PERCENT = {
    BASELINE: [100.0, 100.4, 99.6, 100.2, 99.8],
    OTHER: [90.9, 91.2, 90.6, 91.0, 90.8],
}


def _verdict(table: str, name: str) -> str:
    line = next(line for line in table.splitlines() if line.startswith(name + " "))
    verdicts = ("faster", "slower", "no practical difference", "undecided")
    return next(verdict for verdict in verdicts if f" {verdict} " in line)


def test_the_run_band_and_report_band_decide_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _verdict(report.run_table(_document(TEN_PERCENT)), OTHER) == "faster"
    recorded = _document(TEN_PERCENT, band=0.20)  # mpbench run --band 20
    assert _verdict(report.run_table(recorded), OTHER) == "no practical difference"
    assert "+-20.0%" in report.run_table(recorded)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(recorded))
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 0
    assert _verdict(capsys.readouterr().out, OTHER) == "no practical difference"
    assert main(["report", str(path), "--band", "3", "--out", str(tmp_path / "out")]) == 0
    assert _verdict(capsys.readouterr().out, OTHER) == "faster"
    csv = (tmp_path / "out" / "results.csv").read_text()
    assert "verdict" in csv.splitlines()[0] and "faster" in csv


def test_the_aa_control_prints_the_noise_floor_and_raises_the_alarm() -> None:
    quiet = {**TEN_PERCENT, CONTROL: [100.1, 99.7, 100.3, 99.9, 100.5]}
    table = report.run_table(_document(quiet))
    floor = max(100.5 / 99.6, 100.4 / 99.7) - 1
    assert f"identical work differed by up to {floor:.1%}" in table
    assert "A/A CONTROL" not in table
    # The same work measured 10% apart every time: the machine cannot be trusted.
    noisy = {**TEN_PERCENT, CONTROL: [110.0, 110.5, 109.6, 110.2, 109.9]}
    table = report.run_table(_document(noisy))
    assert "THE A/A CONTROL CAME OUT SLOWER" in table
    statistics = report.run_statistics(_document(noisy))
    assert statistics["control"] == CONTROL
    assert statistics["noise_floor"] == pytest.approx(110.5 / 99.6 - 1)
    control = next(c for c in statistics["comparisons"] if c["name"] == CONTROL)
    assert control["control"] is True and control["verdict"] == "slower"
    # The control stays out of the family: the other comparison is judged as without it.
    alone = report.run_statistics(_document(TEN_PERCENT))["comparisons"][0]
    assert next(c for c in statistics["comparisons"] if c["name"] == OTHER) == alone


def test_spread_warnings_are_printed_and_stored() -> None:
    times = {**TEN_PERCENT, OTHER: [90.9, 91.2, 90.6, 91.0, 140.0]}
    table = report.run_table(_document(times))
    warnings = [line for line in table.splitlines() if line.startswith("warning: ")]
    assert any(f"{OTHER}: repeat 5 (140.0 ms/step) is an outlier" in line for line in warnings)
    stored = report.run_statistics(_document(times))
    assert stored["warnings"] == [line.removeprefix("warning: ") for line in warnings]
    assert stored["band"] == 0.03 and stored["alpha"] == 0.05
    assert stored["minimum_repeats"] == 4 and 0 < stored["family_error_rate"] <= 0.05
