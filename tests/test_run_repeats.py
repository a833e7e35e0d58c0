"""``mpbench run --repeats N``: the interleaved order, the warm-up, every repeat kept, resuming
with repeats, the spread figures and how the table marks the verdicts.

No TensorFlow and no worker process: the runs go through ``run_all`` with the worker replaced by
a function that returns a record, so these tests take milliseconds. A real run with repeats is
``tests/test_docs_schema.py``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpcore import report
from mpcore.names import name_of
from mpcore.run import plan as planning
from mpcore.run.schema import RESULTS_FILE
from mpcore.run.stats import chance_of_no_overlap, compare_all, spread
from mpcore.run.store import finished_repeats

A, B, C = "float32+xla_off", "amp_rewrite+xla_off", "mixed_float16+xla_off"


def test_schedule_rotates_each_round() -> None:
    assert planning.interleaved_schedule([A, B, C], 3) == [
        (A, 0), (B, 0), (C, 0),
        (B, 1), (C, 1), (A, 1),
        (C, 2), (A, 2), (B, 2),
    ]  # fmt: skip
    assert planning.interleaved_schedule([A, B], 1) == [(A, 0), (B, 0)]
    # Two configurations alternate: a rotation would run B twice in a row (A B B A).
    assert planning.interleaved_schedule([A, B], 3) == [
        (A, 0),
        (B, 0),
        (A, 1),
        (B, 1),
        (A, 2),
        (B, 2),
    ]
    assert planning.interleaved_schedule([A], 2) == [(A, 0), (A, 1)]
    with pytest.raises(ValueError, match="repeats must be positive"):
        planning.interleaved_schedule([A], 0)


def test_spread_small_exact_cases() -> None:
    assert spread([3.0, 1.0, 2.0]).median == 2.0
    middle = spread([12.0, 10.0, 11.0, 30.0])
    assert (middle.median, middle.low, middle.high, middle.count) == (11.5, 10.0, 30.0, 4)
    assert chance_of_no_overlap(3) == pytest.approx(0.1)
    assert chance_of_no_overlap(4) == pytest.approx(2 / 70)
    with pytest.raises(ValueError):
        spread([])


def _record(name: str, times: list[float], status: str = "ok") -> dict[str, Any]:
    runs = [
        {"repeat": i, "position": i, "status": status, "ms_per_step": t}
        for i, t in enumerate(times)
    ]
    result = {
        "first_epoch_seconds": 1.0,
        "steady_epoch_seconds": times[-1] * 15 / 1000,
        "ms_per_step": times[-1],
        "images_per_second": 240 / (times[-1] * 15 / 1000),
        "loss": [0.5],
        "accuracy": [0.9],
        "val_accuracy": [0.8],
        "replicas": 1,
        "global_batch": 16,
    }
    return {"name": name, "config": {}, "status": status, "result": result, "repeats": runs}


def test_table_gives_each_speedup_its_interval_and_verdict() -> None:
    times = {
        A: [10.0, 12.0, 11.0, 10.5, 11.5],
        B: [11.5, 10.5, 11.0, 11.2, 10.8],  # the same work: overlapping repeats
        C: [22.0, 20.0, 21.0, 21.5, 20.5],  # twice as slow in every repeat
    }
    document = {"configurations": [_record(name, values) for name, values in times.items()]}
    judged = compare_all(times, A)
    rows = {row["configuration"]: row for row in report.run_rows(document)}
    assert (rows[A]["verdict"], rows[A]["speedup"]) == ("baseline", 1.0)
    assert rows[B]["verdict"] == judged[B].verdict == "undecided"
    assert rows[B]["speedup"] == pytest.approx(judged[B].speedup)
    assert rows[C]["verdict"] == "slower"
    low, high = judged[C].low, judged[C].high
    assert rows[C]["speedup_range"] == f"{judged[C].speedup:.2f}x ({low:.2f}-{high:.2f})"
    assert rows[C]["ms_per_step_range"] == "21.0 (20.0-22.0)"
    # images/s follow the median, not the last repeat's figure.
    assert rows[C]["images_per_s"] == pytest.approx(240 / (21.0 * 15 / 1000))
    table = report.run_table(document)
    assert "undecided" in table and "21.0 (20.0-22.0)" in table and "+-3.0%" in table
    # Two comparisons at 5 repeats each: at most 2 x 2 P(U <= 1) = 3.2% false calls.
    assert "at most 3.2%" in table
    few = {"configurations": [_record(name, values[:3]) for name, values in times.items()]}
    assert "with 3 repeats no comparison can be decided" in report.run_table(few)


def test_table_of_single_runs_warns_that_speedups_have_no_interval() -> None:
    document = {"configurations": [_record(A, [10.0]), _record(C, [20.0])]}
    table = report.run_table(document)
    assert "verdict" not in table.split("\n")[0]
    assert "each configuration ran once" in table


# --------------------------------------------------------------------------------------------
# run_all with a stand-in worker


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch):
    """Replace the worker: record each call as (name, epochs, warm-up?) and return an ``ok``
    record, or a failed one for the names in ``fail``."""
    calls: list[tuple[str, int, bool]] = []
    fail: set[str] = set()

    def run_configuration(plan, config, workdir, repeat=None) -> dict[str, Any]:
        name = name_of(config)
        calls.append((name, plan.settings["epochs"], plan.out.name == "warmup"))
        if name in fail:
            record = {"name": name, "config": config, "status": "failed", "reason": "boom"}
            record.update(result=None, telemetry=None)
        else:
            record = _record(name, [10.0 + len(calls)])
            del record["repeats"]
        return {**record, "wall_seconds": 1.0, "log": f"logs/{name}.log", "exit_code": 0}

    monkeypatch.setattr(planning, "run_configuration", run_configuration)
    return calls, fail


def _plan(tmp_path: Path, repeats: int) -> planning.RunPlan:
    configs = [{"precision": p, "xla": "off"} for p in ("float32", "amp_rewrite")]
    settings = {"model": "small", "epochs": 3}
    return planning.RunPlan(tmp_path, tmp_path / "data", settings, configs, repeats=repeats)


def _document(plan: planning.RunPlan) -> dict[str, Any]:
    data = {"root": str(plan.data_root), "skipped_images": []}
    return plan.new_document(
        profile="quick", profile_reason="test", data=data, machine={}, command=["mpbench"]
    )


def test_run_all_warms_up_then_interleaves_and_keeps_every_repeat(
    tmp_path: Path, fake_worker
) -> None:
    calls, _ = fake_worker
    plan = _plan(tmp_path, repeats=2)
    lines: list[str] = []
    assert planning.run_all(plan, _document(plan), announce=lines.append)
    assert calls == [(A, 1, True), (A, 3, False), (B, 3, False), (A, 3, False), (B, 3, False)]
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert saved["warmup"]["name"] == A and saved["warmup"]["log"] == f"warmup/logs/{A}.log"
    assert [r["name"] for r in saved["configurations"]] == [A, B]  # planned order kept
    first = saved["configurations"][0]
    assert [(r["repeat"], r["position"], r["ms_per_step"]) for r in first["repeats"]] == [
        (0, 0, 12.0),
        (1, 2, 14.0),
    ]
    assert first["result"]["ms_per_step"] == 14.0  # the record is the latest repeat's
    assert finished_repeats(saved) == {A: 2, B: 2}
    assert "[3/4] float32+xla_off (repeat 2/2): training" in lines


def test_a_failed_configuration_is_not_repeated(tmp_path: Path, fake_worker) -> None:
    calls, fail = fake_worker
    fail.add(B)
    plan = _plan(tmp_path, repeats=3)
    planning.run_all(plan, _document(plan), announce=lambda line: None)
    assert [name for name, _, warm in calls if not warm] == [A, B, A, A]  # B's 2nd, 3rd skipped
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    failed = saved["configurations"][1]
    assert failed["status"] == "failed" and len(failed["repeats"]) == 1
    assert finished_repeats(saved) == {A: 3}


def test_resume_runs_only_the_missing_repeats(tmp_path: Path, fake_worker) -> None:
    calls, _ = fake_worker
    plan = _plan(tmp_path, repeats=3)
    document = _document(plan)
    document["configurations"] = [_record(A, [10.0, 11.0, 12.0]), _record(B, [10.0])]
    (tmp_path / RESULTS_FILE).write_text(json.dumps(document))
    resumed = plan.resumed_document()
    lines: list[str] = []
    planning.run_all(plan, resumed, announce=lines.append)
    assert lines[0] == f"resuming: 1 configuration(s) already finished: {A}"
    assert [(name, warm) for name, _, warm in calls] == [(A, True), (B, False), (B, False)]
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert finished_repeats(saved) == {A: 3, B: 3}
    assert [r["repeat"] for r in saved["configurations"][1]["repeats"]] == [0, 1, 2]
    # Nothing left to run: no warm-up either.
    calls.clear()
    planning.run_all(plan, plan.resumed_document(), announce=lambda line: None)
    assert calls == []
