"""``mpbench compare OLD NEW``: two saved runs (or pytest-benchmark files) of the same work agree,
a planted slowdown is called slower and fails the comparison, bad input is one line.

The runs are results.json documents written here with drawn timings (no training): what compare
reads of a run is each configuration's repeats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpcore.face.cli import main
from mpcore.run.schema import SCHEMA
from mpcore.run.stats import SAME, UNDECIDED

NAMES = (
    "float32+xla_off",
    "mixed_float16+xla_off",
    "mixed_bfloat16+xla_off",
    "amp_rewrite+xla_off",
)
#: Each configuration's true ms/step: they differ, as real configurations do.
TRUE_MS = (50.0, 40.0, 65.0, 48.0)


def _run(times: dict[str, list[float]]) -> dict[str, Any]:
    def record(name: str, values: list[float]) -> dict[str, Any]:
        result = {
            "first_epoch_seconds": 2.0,
            "steady_epoch_seconds": values[-1] * 15 / 1000,
            "ms_per_step": values[-1],
            "images_per_second": 240 / (values[-1] * 15 / 1000),
            "loss": [0.5],
            "accuracy": [0.9],
            "val_accuracy": [0.8],
        }
        repeats = [
            {"repeat": i, "position": i, "status": "ok", "ms_per_step": t}
            for i, t in enumerate(values)
        ]
        return {"name": name, "config": {}, "status": "ok", "result": result, "repeats": repeats}

    return {
        "schema": SCHEMA,
        "settings": {},
        "data": {},
        "configurations": [record(name, values) for name, values in times.items()],
    }


def _draw(seed: int, repeats: int = 5, noise: float = 0.05) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {
        name: list(ms * (1 + noise * rng.standard_normal(repeats)))
        for name, ms in zip(NAMES, TRUE_MS, strict=True)
    }


def _save(path: Path, document: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


def _verdicts(stdout: str) -> dict[str, str]:
    """The verdict column of compare's table, by configuration."""
    verdicts = {}
    for line in stdout.splitlines():
        name = line.split(" ", 1)[0]
        if name in NAMES:
            verdicts[name] = line.rsplit("  ", 1)[-1].strip()
    return verdicts


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4), (5, 6)])
def test_two_runs_of_the_same_work_show_no_decided_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seeds: tuple[int, int]
) -> None:
    old = _save(tmp_path / "old" / "results.json", _run(_draw(seeds[0])))
    new = _save(tmp_path / "new" / "results.json", _run(_draw(seeds[1])))
    code = main(["compare", str(Path(old).parent), new])
    out = capsys.readouterr().out
    verdicts = _verdicts(out)
    assert set(verdicts) == set(NAMES)
    assert set(verdicts.values()) <= {SAME, UNDECIDED}, out
    assert code == 0
    assert "at most" in out and "+-3.0%" in out


def test_a_planted_slowdown_is_called_slower_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_times, new_times = _draw(7), _draw(8)
    slowed = NAMES[1]
    new_times[slowed] = [1.3 * t for t in new_times[slowed]]  # the JSON edited: 30% slower
    old = _save(tmp_path / "old.json", _run(old_times))
    new = _save(tmp_path / "new.json", _run(new_times))
    assert main(["compare", old, new]) == 1
    out = capsys.readouterr().out
    verdicts = _verdicts(out)
    assert verdicts[slowed] == "slower"
    assert {verdicts[name] for name in NAMES if name != slowed} <= {SAME, UNDECIDED}
    assert f"FAIL: decided slower by more than 0.0%: {slowed} (+" in out
    # A threshold above the slowdown lets it pass; the other way round NEW is faster.
    assert main(["compare", old, new, "--fail-above", "45"]) == 0
    capsys.readouterr()
    assert main(["compare", new, old]) == 0
    assert _verdicts(capsys.readouterr().out)[slowed] == "faster"


def _benchmarks(rounds: dict[str, list[float] | None]) -> dict[str, Any]:
    def bench(name: str, data: list[float] | None) -> dict[str, Any]:
        stats: dict[str, Any] = {"median": 0.1}
        if data is not None:
            stats["data"] = data
        return {"name": name, "fullname": f"benchmarks/test_x.py::{name}", "stats": stats}

    return {"benchmarks": [bench(name, data) for name, data in rounds.items()]}


def test_pytest_benchmark_files_compare_their_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(9)
    old = {"fast": list(0.1 + 0.001 * rng.standard_normal(20)), "bare": None}
    new = {"fast": [1.3 * t for t in 0.1 + 0.001 * rng.standard_normal(20)], "bare": None}
    folder = tmp_path / ".benchmarks" / "Linux-CPython"
    _save(folder / "0001_old.json", _benchmarks(old))
    new_path = _save(tmp_path / "new.json", _benchmarks(new))
    assert main(["compare", str(tmp_path / ".benchmarks"), new_path]) == 1
    out = capsys.readouterr().out
    assert "ms/round" in out
    lines = {line.split(" ", 1)[0]: line for line in out.splitlines()}
    assert lines["benchmarks/test_x.py::fast"].rstrip().endswith("slower")
    assert "no per-round data" in lines["benchmarks/test_x.py::bare"]


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing", "not found"),
        ("kinds", "compare a run with a run"),
        ("disjoint", "no configuration in common"),
        ("band", "--band"),
    ],
)
def test_bad_input_is_one_line_and_exit_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str, expected: str
) -> None:
    run = _save(tmp_path / "run.json", _run(_draw(1)))
    other = {
        "missing": str(tmp_path / "nowhere.json"),
        "kinds": _save(tmp_path / "bench.json", _benchmarks({"x": [0.1, 0.2]})),
        "disjoint": _save(tmp_path / "other.json", _run({"renamed": [1.0, 2.0]})),
        "band": run,
    }[problem]
    extra = ["--band", "-1"] if problem == "band" else []
    try:
        code = main(["compare", run, other, *extra])
    except SystemExit as stop:  # argparse's own one-line error
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err


def test_too_few_repeats_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _save(tmp_path / "old.json", _run(_draw(1, repeats=4)))
    new = _run(_draw(2, repeats=4))
    new["configurations"][1]["repeats"] = [
        {**run, "ms_per_step": 2 * run["ms_per_step"]}
        for run in new["configurations"][1]["repeats"]
    ]
    assert main(["compare", old, _save(tmp_path / "new.json", new)]) == 0  # twice as slow...
    out = capsys.readouterr().out
    assert set(_verdicts(out).values()) == {UNDECIDED}  # ...but 4 repeats cannot say so
    assert "with 4 repeats no comparison can be decided: 4 need 5 repeats a side" in out
