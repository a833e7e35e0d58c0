"""The life of a run: each repeat's own result file, a killed repeat and its resume, the
schedule, the settings a resume must share, the A/A control, ``--repeats auto``, progress, and
the table, CSV and plot telling one story.

One real run (a real worker SIGKILLed mid-repeat, then ``--resume``) is the slow scenario;
everything else calls the functions in-process, with the worker replaced where the process
boundary is not the point.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from mpcore import report
from mpcore.face.cli import main
from mpcore.names import BASELINE, CONTROL_SUFFIX, name_of
from mpcore.run import plan as planning
from mpcore.run.files import RunSetupError
from mpcore.run.schema import RESULTS_FILE
from mpcore.run.stats import is_control, minimum_repeats
from mpcore.run.store import finished_repeat_sets

# --------------------------------------------------------------------------------------------
# A real worker killed by a real signal in its repeat, then --resume


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``mpbench run --repeats 2`` (one configuration, tiny) whose second repeat's worker
    SIGKILLs itself after its first step, then ``--resume`` without the fault: the results.json
    after each, and their exit codes."""
    from mpcore.data.synthetic import write_synthetic_ships

    work = tmp_path_factory.mktemp("killed")
    root = write_synthetic_ships(work / "ships", per_class=8, image_size=32)
    argv = ["run", "--profile", "quick", "--data", str(root), "--precision", "float32"]
    argv += ["--epochs", "2", "--image-size", "32", "--batch-size", "4", "--repeats", "2"]
    argv += ["--out", str(work / "run")]
    path = work / "run" / RESULTS_FILE
    with pytest.MonkeyPatch.context() as patch:
        for name in ("TF_CONFIG", "MPBENCH_WORKER_FAULT"):
            patch.delenv(name, raising=False)
        patch.setenv("MPBENCH_CACHE", str(work / "cache"))
        patch.setenv("MPBENCH_FAULT", f"{BASELINE}=kill@2")
        killed_code = main(argv)
        killed = json.loads(path.read_text())
        patch.delenv("MPBENCH_FAULT")
        resumed_code = main([*argv, "--resume"])
        resumed = json.loads(path.read_text())
    return {"killed": killed, "killed_code": killed_code, "resumed": resumed, "code": resumed_code}


@pytest.mark.slow
def test_a_killed_repeat_is_failed_with_its_signal_never_an_earlier_repeat(
    killed_then_resumed: dict[str, Any],
) -> None:
    document = killed_then_resumed["killed"]
    assert killed_then_resumed["killed_code"] == 1
    (record,) = document["configurations"]
    first, second = record["repeats"]
    assert (first["repeat"], first["status"]) == (0, "ok")
    # A shared result file would have handed repeat 2 repeat 1's record: ok, same ms/step.
    assert (second["repeat"], second["status"], second["ms_per_step"]) == (1, "failed", None)
    assert "killed by SIGKILL" in second["reason"]
    assert record["status"] == "failed"
    assert record["reason"].startswith("repeat 2: worker killed by SIGKILL")
    assert document["warmup"]["status"] == "ok"  # the fault waits for repeat 2, not the warm-up


@pytest.mark.slow
def test_resume_reruns_exactly_the_killed_repeat(killed_then_resumed: dict[str, Any]) -> None:
    before = killed_then_resumed["killed"]["configurations"][0]["repeats"][0]
    document = killed_then_resumed["resumed"]
    assert killed_then_resumed["code"] == 0
    (record,) = document["configurations"]
    assert record["status"] == "ok" and record["reason"] is None
    first, second = record["repeats"]
    assert first == before  # repeat 1 kept as it was, not run again
    assert (second["repeat"], second["status"]) == (1, "ok")
    assert second["ms_per_step"] > 0 and second["finished"] >= first["finished"]
    assert document["warmup"]["status"] == "ok"  # the resumed repeat got a fresh warm-up


# --------------------------------------------------------------------------------------------
# The schedule: lazy, capped, balanced, and a resume's own interleaving

A, B, C = BASELINE, "mixed_float16+xla_off", "amp_rewrite+xla_off"


def test_an_absurd_repeat_count_is_refused_in_one_line_before_anything_runs(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke(["run", "--repeats", "100000000000000000000"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "at most 1000 repeats" in err
    assert list(tmp_path.iterdir()) == []
    code, _, err = invoke(["run", "--budget", "5"])
    assert (
        code == 2 and err.strip() == "mpbench run: error: --budget applies to --repeats auto only"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_schedule_is_built_lazily() -> None:
    runs = planning.iter_schedule([A, B, C], 10**20)
    assert list(itertools.islice(runs, 4)) == [(A, 0), (B, 0), (C, 0), (A, 1)]


@pytest.mark.parametrize("configs, rounds", [(12, 3), (12, 4), (12, 5), (4, 3), (5, 7), (3, 2)])
def test_positions_are_balanced_when_rounds_are_not_a_multiple(configs: int, rounds: int) -> None:
    names = [f"c{i}" for i in range(configs)]
    schedule = planning.interleaved_schedule(names, rounds)
    assert sorted(schedule) == sorted((n, r) for n in names for r in range(rounds))
    positions = {name: [] for name in names}
    for index, (name, _) in enumerate(schedule):
        positions[name].append(index % configs)
    for name, held in positions.items():
        counts = [held.count(p) for p in range(configs)]
        # Every position of a round floor(R/C) or ceil(R/C) times...
        assert max(counts) - min(counts) <= 1, (name, held)
        # ...and, with fewer rounds than configurations, spread over the whole round: its
        # positions C/R apart, rounded (never bunched at one end).
        if rounds <= configs:
            ordered = sorted(held)
            gaps = [b - a for a, b in itertools.pairwise([*ordered, ordered[0] + configs])]
            assert set(gaps) <= {configs // rounds, -(-configs // rounds)}, (name, held)
    # No configuration runs twice in a row.
    assert all(a[0] != b[0] for a, b in itertools.pairwise(schedule))


def _record(name: str, runs: dict[int, float | None]) -> dict[str, Any]:
    """A stored record whose repeat ``r`` took ``runs[r]`` ms/step (None: failed)."""
    entries = [
        {"repeat": r, "position": r, "status": "ok" if t else "failed", "ms_per_step": t}
        for r, t in runs.items()
    ]
    ok = all(entry["status"] == "ok" for entry in entries)
    last = list(runs.values())[-1] or 1.0
    result = {
        "first_epoch_seconds": 1.0,
        "steady_epoch_seconds": last * 15 / 1000,
        "ms_per_step": last,
        "images_per_second": 240 / (last * 15 / 1000),
        "epoch_seconds": [1.0, last * 15 / 1000],
        "loss": [0.6, 0.5],
        "accuracy": [0.8, 0.9],
        "val_loss": [0.7, 0.6],
        "val_accuracy": [0.7, 0.8],
        "replicas": 1,
        "global_batch": 16,
    }
    return {
        "name": name,
        "config": {"precision": name.split("+")[0], "xla": "off"},
        "status": "ok" if ok else "failed",
        "reason": None if ok else "worker killed by SIGKILL",
        "result": result if ok else None,
        "telemetry": None,
        "repeats": entries,
    }


class FakeWorker:
    """Stands in for the worker process: ms/step drawn per configuration, ``seconds`` of a
    fake clock per run; records every call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: dict[str, Any], seconds=1.0):
        self.calls: list[tuple[str, int | None]] = []
        self.clock = 0.0
        self.times, self.seconds = times, seconds
        monkeypatch.setattr(planning, "run_configuration", self)
        monkeypatch.setattr(planning, "CLOCK", lambda: self.clock)

    def __call__(self, plan, config, workdir, repeat=None) -> dict[str, Any]:
        name = name_of(config)
        self.calls.append((name, repeat))
        self.clock += self.seconds
        take = self.times.get(name, 10.0)
        ms = take(len(self.calls)) if callable(take) else take
        record = _record(name, {0: ms})
        del record["repeats"]
        return {**record, "wall_seconds": self.seconds, "log": "x.log", "exit_code": 0}


def _plan(tmp_path: Path, names: list[str], repeats: int, **fields: Any) -> planning.RunPlan:
    configs = []
    for name in names:
        config = {"precision": name.split("+")[0], "xla": "off"}
        if name.endswith(CONTROL_SUFFIX):
            config = {"precision": "float32", "xla": "off", "control": "A/A"}
        configs.append(config)
    settings = {"model": "small", "epochs": 3}
    return planning.RunPlan(
        tmp_path, tmp_path / "data", settings, configs, repeats=repeats, **fields
    )


def _document(plan: planning.RunPlan) -> dict[str, Any]:
    data = {"root": str(plan.data_root), "skipped_images": []}
    return plan.new_document(
        profile="quick", profile_reason="test", data=data, machine={}, command=["mpbench"]
    )


def test_resumed_repeats_interleave_with_the_others_after_a_fresh_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(tmp_path, [A, B, C], repeats=3)
    document = _document(plan)
    # A finished; B's second repeat was killed; C never ran past its first.
    document["configurations"] = [
        _record(A, {0: 10.0, 1: 10.0, 2: 10.0}),
        _record(B, {0: 8.0, 1: None}),
        _record(C, {0: 9.0}),
    ]
    (tmp_path / RESULTS_FILE).write_text(json.dumps(document))
    worker = FakeWorker(monkeypatch, {})
    assert planning.run_all(plan, plan.resumed_document(), announce=lambda line: None)
    assert worker.calls == [(A, None), (B, 1), (C, 1), (B, 2), (C, 2)]
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert finished_repeat_sets(saved) == {A: {0, 1, 2}, B: {0, 1, 2}, C: {0, 1, 2}}
    assert [r["status"] for r in saved["configurations"]] == ["ok", "ok", "ok"]


def test_resume_refuses_other_distribution_settings_naming_them(tmp_path: Path) -> None:
    plan = _plan(tmp_path, [A], repeats=1)
    document = _document(plan)
    document["distribution"] = {"strategy": "mirrored", "workers": 0, "cpu_replicas": 2}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(document))
    same = {"strategy": "mirrored", "workers": 0, "cpu_replicas": 2, "replicas": 2}
    assert plan.resumed_document(same)["status"] == "running"
    with pytest.raises(RunSetupError) as refused:
        plan.resumed_document({"strategy": "none", "workers": 0, "cpu_replicas": 0})
    message = str(refused.value)
    assert "\n" not in message
    assert "different --strategy, --cpu-replicas" in message


def test_cli_resume_with_another_strategy_exits_2_naming_it(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the command line: the first run (its workers stubbed) records the distribution,
    the resume with another is refused in one line before anything trains."""
    from mpcore.data.synthetic import write_synthetic_ships
    from mpcore.run.files import write_json_atomic

    plans: list[planning.RunPlan] = []

    def run_all(plan, document, announce=print) -> bool:
        plans.append(plan)
        write_json_atomic(plan.results_path, document)
        return True

    monkeypatch.setattr(planning, "run_all", run_all)
    monkeypatch.setenv("MPBENCH_CACHE", str(tmp_path / "cache"))
    root = write_synthetic_ships(tmp_path / "ships", per_class=8, image_size=32)
    argv = ["run", "--profile", "quick", "--data", str(root), "--precision", "float32"]
    argv += ["--epochs", "2", "--image-size", "32", "--batch-size", "2", "--quiet"]
    argv += ["--out", str(tmp_path / "run")]
    code, _, _ = invoke([*argv, "--strategy", "mirrored", "--cpu-replicas", "2"])
    assert code == 0
    assert plans[0].verbose == 0  # --quiet: no Keras lines
    assert [name_of(c) for c in plans[0].configs] == [A, f"{A}@mirrored"]  # quick: no control
    code, _, err = invoke([*argv, "--resume"])
    assert code == 2 and len(plans) == 1
    assert err.count("\n") == 1
    assert "different --strategy, --cpu-replicas" in err


# --------------------------------------------------------------------------------------------
# The A/A control


def test_the_control_is_the_baseline_again_as_its_own_interleaved_row() -> None:
    modes = [{"precision": p, "xla": "off"} for p in ("float32", "mixed_float16")]
    planned = [name_of(c) for c in planning.planned_configs(modes, "none", control=True)]
    assert planned == [A, B, f"{A} (A/A)"]
    # Without the baseline there is nothing to repeat.
    assert planning.planned_configs(modes[1:], "none", control=True) == modes[1:]


def test_the_control_row_gives_the_noise_floor_under_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = A + CONTROL_SUFFIX
    assert is_control(control)  # the name the planner gives is the one the statistics know
    plan = _plan(tmp_path, [A, B, control], repeats=5)
    noise = {A: lambda n: 10.0 + n % 3 * 0.2, control: lambda n: 10.1 + n % 2 * 0.3, B: 5.0}
    worker = FakeWorker(monkeypatch, noise)
    assert planning.run_all(plan, _document(plan), announce=lambda line: None)
    timed = [name for name, repeat in worker.calls if repeat is not None]
    assert timed.count(control) == 5  # interleaved like any row
    assert all(a != b for a, b in itertools.pairwise(timed))
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    rows = {
        r["name"]: [run["ms_per_step"] for run in r["repeats"]] for r in saved["configurations"]
    }
    floor = max(max(rows[A]) / min(rows[control]), max(rows[control]) / min(rows[A])) - 1
    assert report.run_statistics(saved)["noise_floor"] == pytest.approx(floor)
    table = report.run_table(saved)
    assert f"identical work differed by up to {floor:.1%}" in table
    assert _table_line(table, control)  # a row of its own
    assert "TOO NOISY" not in table.upper()


def test_the_control_row_has_files_of_its_own_despite_the_slash_in_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker replaced at the launcher, so the run's own paths are used: the spec, the log,
    the result file and the TensorBoard folder of ``float32+xla_off (A/A)``."""
    from mpcore.run import launcher
    from mpcore.run.files import write_json_atomic

    def run_worker(spec, spec_path: Path, log_path: Path) -> int:
        spec.write(spec_path)  # as the real launcher does, before starting the worker
        log_path.write_text("log\n")
        Path(spec.tensorboard_dir).mkdir(parents=True)
        record = _record(spec.name, {0: 10.0})
        del record["repeats"]
        write_json_atomic(Path(spec.result_path), record)
        return 0

    monkeypatch.setattr(launcher, "run_worker", run_worker)
    control = A + CONTROL_SUFFIX
    plan = _plan(tmp_path, [A, control], repeats=2)
    assert planning.run_all(plan, _document(plan), announce=lambda line: None)
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert [(r["name"], r["status"]) for r in saved["configurations"]] == [
        (A, "ok"),
        (control, "ok"),
    ]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        f"{A} (A-A).log",
        f"{A}.log",
    ]
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == [A, f"{A} (A-A)"]


def test_an_a_a_row_called_different_says_loudly_the_machine_was_too_noisy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = A + CONTROL_SUFFIX
    plan = _plan(tmp_path, [A, control], repeats=6)
    FakeWorker(monkeypatch, {A: lambda n: 10.0 + n * 0.01, control: lambda n: 14.0 + n * 0.01})
    planning.run_all(plan, _document(plan), announce=lambda line: None)
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert "TOO NOISY TO TRUST THE OTHER VERDICTS" in report.run_table(saved).upper()


# --------------------------------------------------------------------------------------------
# --repeats auto and the progress lines


def test_repeats_auto_stops_as_soon_as_every_comparison_is_decided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(tmp_path, [A, B], repeats=3, budget_seconds=600)
    worker = FakeWorker(monkeypatch, {A: lambda n: 10.0 + n * 0.01, B: lambda n: 5.0 + n * 0.01})
    lines: list[str] = []
    assert planning.run_all(plan, _document(plan), announce=lines.append)
    # Three rounds cannot decide even a 2x speedup at a 5% error rate (the exact test needs
    # minimum_repeats(1) a side): auto adds rounds up to there, and not one more.
    rounds = max(3, minimum_repeats(1))
    assert rounds > 3
    assert len(worker.calls) == 1 + 2 * rounds
    assert f"repeats auto: every comparison decided after {rounds} round(s)" in lines
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert saved["auto_repeats"] == {"budget_seconds": 600, "rounds": rounds, "undecided": []}


def test_repeats_auto_adds_rounds_until_the_budget_and_names_the_undecided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(tmp_path, [A, B, C], repeats=3, budget_seconds=20)
    # C interleaves with A at +-20%: never decided; B is twice as fast, decided at once.
    wobble = {A: lambda n: 10.0 * (1.2 if n % 2 else 0.8), B: 5.0}
    wobble[C] = lambda n: 10.0 * (0.8 if n % 2 else 1.2)
    worker = FakeWorker(monkeypatch, wobble)
    lines: list[str] = []
    planning.run_all(plan, _document(plan), announce=lines.append)
    # 1 s a run: the warm-up and 3 rounds take 10 s; rounds of 3 s start while they end
    # within 20 s (at 13, 16, 19), the next (22) would not.
    assert len(worker.calls) == 1 + 3 * 6
    assert plan.repeats == 6
    assert lines[-1].startswith("repeats auto: the budget of 20 s is spent after 6 round(s)")
    assert lines[-1].endswith(f"undecided: {C}")
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert saved["auto_repeats"]["undecided"] == [C]
    assert [len(r["repeats"]) for r in saved["configurations"]] == [6, 6, 6]
    # The extra rounds interleave too: no configuration twice in a row.
    timed = [name for name, repeat in worker.calls if repeat is not None]
    assert all(a != b for a, b in itertools.pairwise(timed))


def test_a_resumed_auto_run_goes_on_from_its_recorded_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(tmp_path, [A, B], repeats=3, budget_seconds=10)
    document = _document(plan)
    # An auto run stopped mid-round 5: A has five repeats, B four.
    document["configurations"] = [
        _record(A, {r: 10.0 + (r % 2) for r in range(5)}),
        _record(B, {r: 10.5 - (r % 2) for r in range(4)}),
    ]
    (tmp_path / RESULTS_FILE).write_text(json.dumps(document))
    worker = FakeWorker(monkeypatch, {A: lambda n: 10.0 + n % 2, B: lambda n: 10.5 - n % 2})
    planning.run_all(plan, plan.resumed_document(), announce=lambda line: None)
    # B's fifth first, then new rounds from index 5 on: no recorded repeat is overwritten.
    assert worker.calls[:2] == [(A, None), (B, 4)]
    assert {repeat for _, repeat in worker.calls[2:]} >= {5}
    saved = json.loads((tmp_path / RESULTS_FILE).read_text())
    first = saved["configurations"][0]["repeats"]
    assert [run["repeat"] for run in first] == list(range(len(first)))
    assert [run["ms_per_step"] for run in first[:5]] == [10.0, 11.0, 10.0, 11.0, 10.0]


def test_progress_lines_estimate_the_time_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(tmp_path, [A, B], repeats=3)
    FakeWorker(monkeypatch, {}, seconds=30.0)
    lines: list[str] = []
    planning.run_all(plan, _document(plan), announce=lines.append)
    finished = [line for line in lines if "finished in" in line]
    assert len(finished) == 6
    # 30 s a run: after the first of six, five left, 150 s; after the last, nothing.
    assert finished[0].endswith(f"; about 2 min left; next: {B}")
    assert finished[3].endswith(f"; about 60 s left; next: {A}")
    assert finished[-1].endswith("); all done")


# --------------------------------------------------------------------------------------------
# The table, results.csv and step_time.png tell one story


def _repeated_document(repeats: int) -> dict[str, Any]:
    """A results.json of three configurations with ``repeats`` repeats each, the latest repeat
    of each far from its median (where a per-repeat ratio would disagree with the table)."""
    base = [10.0, 12.0, 9.0, 11.5, 10.5, 11.0][:repeats]
    other = [6.0, 5.0, 7.5, 5.5, 6.2, 5.8][:repeats]
    slow = [20.0, 26.0, 21.0, 30.0, 22.0, 24.0][:repeats]
    records = [
        _record(name, dict(enumerate(times))) for name, times in ((A, base), (B, other), (C, slow))
    ]
    return {
        "schema": "mpbench-results/1",
        "settings": {"model": "small"},
        "configurations": records,
    }


def _table_line(table: str, name: str) -> str:
    (line,) = [line for line in table.splitlines() if line.startswith(name + " ")]
    return line


@pytest.mark.parametrize("repeats", [1, 2, 4, 6])
def test_table_csv_and_plot_give_the_same_speedups_and_the_baseline_1x(
    repeats: int, tmp_path: Path
) -> None:
    import csv

    from mpcore.report.render import step_time_data

    document = _repeated_document(repeats)
    table = report.run_table(document)
    report.render_run(document, tmp_path)
    with open(tmp_path / "results.csv") as handle:
        csv_rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    plotted = {entry["configuration"]: entry for entry in step_time_data(document)}
    assert set(plotted) == set(csv_rows) == {A, B, C}
    assert float(csv_rows[A]["speedup"]) == plotted[A]["speedup"] == 1.0
    assert "1.00x" in _table_line(table, A)
    for name in (B, C):
        speedup = plotted[name]["speedup"]
        assert float(csv_rows[name]["speedup"]) == pytest.approx(speedup, rel=1e-12)
        assert f"{speedup:.2f}x" in _table_line(table, name)
        assert float(csv_rows[name]["ms_per_step"]) == plotted[name]["ms_per_step"]
        # The bar is the median over repeats, whatever the latest repeat took.
        assert plotted[name]["ms_per_step"] == statistics.median(plotted[name]["repeats"])
        # Every repeat is drawn, with the table's interval where it has a finite one.
        assert len(plotted[name]["repeats"]) == repeats
        if plotted[name]["interval"] is not None:
            low, high = plotted[name]["interval"]
            assert low <= speedup <= high
            assert f"{low:.2f}-{high:.2f}" in _table_line(table, name)
        elif repeats > 1:
            assert "no interval" in _table_line(table, name)
    if repeats == 6:  # enough for a finite interval at Holm's level
        assert all(plotted[name]["interval"] for name in (B, C))
    assert (tmp_path / "step_time.png").stat().st_size > 0


def test_one_epoch_says_no_steady_epoch_in_the_table_and_results_json() -> None:
    from mpcore.run.store import steady_description

    assert steady_description(1).startswith("no steady epoch")
    assert steady_description(4) == "median of epochs 2-4"
    document = _repeated_document(2)
    for record in document["configurations"]:
        record["result"]["epoch_seconds"] = [2.8]
        record["result"]["steady"] = steady_description(1)
    table = report.run_table(document)
    for name in (A, B, C):
        line = _table_line(table, name)
        assert line.count("no steady epoch") >= 3  # steady epoch s, ms/step, images/s
    assert "no steady epoch (" in table  # and the footnote says why
    steady = _repeated_document(2)
    assert "no steady epoch" not in report.run_table(steady)
