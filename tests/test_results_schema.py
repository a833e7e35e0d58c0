"""results.json through its one JSON Schema: what ``mpbench report`` refuses, what the writer
refuses, the generated docs page, and hostile mutations of real files.

The real documents are files made once and checked in under ``tests/data/``:
``small_run_results.json`` is the results.json of a real small ``mpbench run`` (two precisions,
two epochs, ``--repeats 2``, synthetic ships on the CPU), ``plain_pytest_benchmark.json`` the
``--benchmark-json`` output of a plain project's pytest-benchmark run (a ``benchmark`` fixture
timing ``fibonacci`` and ``sorted``; no mpbench in it).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpcore.face.cli import main
from mpcore.run import files
from mpcore.run.schema import SCHEMA, ShapeError, check_results, schema_document
from mpcore.run.store import store_record

DATA = Path(__file__).resolve().parent / "data"
REAL_RUN = DATA / "small_run_results.json"
PLAIN_BENCHMARK = DATA / "plain_pytest_benchmark.json"
REPO = Path(__file__).resolve().parents[1]


def real_run() -> dict[str, Any]:
    return json.loads(REAL_RUN.read_text())


def report(path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["report", str(path), "--out", str(out)])
    except SystemExit as stop:
        code = stop.code
    printed, err = capsys.readouterr()
    return code, printed, err


def assert_refused(code: int, err: str, *expected: str) -> None:
    """Exit 2 and one line on stderr naming the problem, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mpbench report: error: "), err
    for part in expected:
        assert part in lines[0], (part, lines[0])


def test_the_real_run_is_valid_and_repeated() -> None:
    """The fixture is what the cases below break: valid, two configurations, repeats each."""
    document = real_run()
    check_results(document)
    assert len(document["configurations"]) == 2
    assert all(len(record["repeats"]) == 2 for record in document["configurations"])


# --------------------------------------------------------------------------------------------
# report of a hostile results.json: each case one line and exit 2


def _set(path: str, value: Any) -> Any:
    """An edit of the real run: ``path`` (dotted, list positions as numbers) := value."""

    def edit(document: dict[str, Any]) -> None:
        def walk(node: Any, parts: list[str]) -> None:
            head, rest = parts[0], parts[1:]
            key: Any = int(head) if isinstance(node, list) else head
            if rest:
                walk(node[key], rest)
            else:
                node[key] = value

        walk(document, path.split("."))

    return edit


def _infinite_with_repeats(document: dict[str, Any]) -> None:
    record = document["configurations"][0]
    record["result"]["ms_per_step"] = math.inf
    for run in record["repeats"]:
        run["ms_per_step"] = math.inf


CASES = {
    "ms_per_step 0": (
        _set("configurations.0.result.ms_per_step", 0),
        "key 'configurations[0].result.ms_per_step' should be a number > 0, found 0",
    ),
    "ms_per_step Infinity with repeats": (
        _infinite_with_repeats,
        "key 'configurations[0].repeats[0].ms_per_step' should be a number",
    ),
    "machine a string": (
        _set("machine", "vm"),
        "key 'machine' should be an object, found a string",
    ),
    "repeats a string": (
        _set("configurations.0.repeats", "3"),
        "key 'configurations[0].repeats' should be a list, found a string",
    ),
    "a NaN median": (
        _set("configurations.1.repeats.0.ms_per_step", math.nan),
        "key 'configurations[1].repeats[0].ms_per_step' should be a number",
    ),
    "a negative ms/step": (
        _set("configurations.1.result.ms_per_step", -39.16),
        "key 'configurations[1].result.ms_per_step' should be a number > 0, found -39.16",
    ),
    "a newer schema version": (
        _set("schema", "mpbench-results/2"),
        "schema 'mpbench-results/2' is not one this mpbench reads (it reads mpbench-results/1)",
    ),
    "status OK": (
        _set("configurations.0.status", "OK"),
        "key 'configurations[0].status' should be one of 'ok', 'failed', found 'OK'",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_report_of_a_hostile_results_file_is_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, expected = CASES[case]
    document = real_run()
    edit(document)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document, allow_nan=True))  # NaN/Infinity as Python writes them
    code, printed, err = report(path, tmp_path / "report", capsys)
    assert_refused(code, err, f"{path}: {expected}")
    if "Infinity" in case or "NaN" in case:
        assert err.rstrip().endswith("Infinity" if "Infinity" in case else "NaN"), err
    assert printed == ""
    assert not (tmp_path / "report").exists()  # nothing rendered from a refused file


def test_report_renders_the_real_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, err = report(REAL_RUN, tmp_path, capsys)
    assert code == 0, err
    assert "float32+xla_off" in printed and "mixed_bfloat16+xla_off" in printed
    assert "1.00x" in printed  # the baseline's speedup over itself: the medians were read
    assert (tmp_path / "results.csv").is_file()


# --------------------------------------------------------------------------------------------
# the writer: the same schema, before anything is written


def test_the_writer_refuses_what_the_reader_would(tmp_path: Path) -> None:
    document = real_run()
    document["configurations"][0]["result"]["ms_per_step"] = 0.0
    with pytest.raises(ShapeError, match=r"ms_per_step' should be a number > 0, found 0.0"):
        files.write_results(tmp_path / "results.json", document)
    assert not (tmp_path / "results.json").exists()


def test_the_writer_writes_a_non_finite_loss_as_null(tmp_path: Path) -> None:
    """JSON has no NaN: a NaN validation loss is written as null, as strict JSON."""
    document = real_run()
    document["configurations"][0]["result"]["val_loss"][-1] = math.nan
    files.write_results(tmp_path / "results.json", document)

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} written")

    written = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert written["configurations"][0]["result"]["val_loss"][-1] is None
    check_results(written)


def test_a_finished_record_that_breaks_the_schema_is_stored_as_failed() -> None:
    document = real_run()
    record = copy.deepcopy(document["configurations"][0])
    record["result"]["ms_per_step"] = 0.0
    store_record(document, record)
    stored = document["configurations"][-1]
    assert stored["status"] == "failed" and stored["result"] is None
    assert "ms_per_step' should be a number > 0, found 0.0" in stored["reason"]
    check_results(document)


def test_an_invalid_document_is_rescued_not_lost(tmp_path: Path) -> None:
    document = real_run()
    document["status"] = "finished"
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(files.ResultsUnsavable, match="should be one of") as caught:
        files.save_results(folder / "results.json", document, announce=lambda _: None)
    rescue = files.fallback_path(folder / "results.json")
    try:
        assert str(rescue) in str(caught.value)
        assert json.loads(rescue.read_text())["configurations"] == document["configurations"]
    finally:
        rescue.unlink(missing_ok=True)


def test_resume_reads_through_the_schema(tmp_path: Path) -> None:
    document = real_run()
    document["schema"] = "mpbench-results/2"
    (tmp_path / "results.json").write_text(json.dumps(document))
    with pytest.raises(files.RunSetupError, match="it reads mpbench-results/1"):
        files.read_results(tmp_path / "results.json")


# --------------------------------------------------------------------------------------------
# the docs page is generated from the schema


def _doc_tool() -> Any:
    spec = importlib.util.spec_from_file_location(
        "results_schema_doc", REPO / "tools" / "results_schema_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_results_schema_is_generated_from_the_schema() -> None:
    tool = _doc_tool()
    page = (REPO / "docs" / "results-schema.md").read_text()
    assert page == tool.render(schema_document()), "run: python tools/results_schema_doc.py"
    assert "| `configurations[].result.ms_per_step` | number (> 0) | always |" in page
    assert f'string ("{SCHEMA}")' in page


def test_the_doc_check_fails_on_a_stale_page(tmp_path: Path, monkeypatch) -> None:
    tool = _doc_tool()
    stale = tmp_path / "results-schema.md"
    stale.write_text("# results.json\n")
    monkeypatch.setattr(tool, "PAGE", stale)
    assert tool.main(["--check"]) == 1
    assert tool.main([]) == 0 and tool.main(["--check"]) == 0


# --------------------------------------------------------------------------------------------
# hostile mutations of the real files, field by field: rendered, or one line and exit 2

HOSTILE = [
    None,
    True,
    "",
    "x",
    "OK",
    0,
    -1,
    1.5,
    -39.16,
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    10**30,
    [],
    [1],
    ["x"],
    [None],
    {},
    {"a": 1},
]


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key and list position of a JSON document (the root excluded)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield (*prefix, position)
            yield from paths(item, (*prefix, position))


def mutate(document: Any, path: tuple, operation: str, value: Any) -> Any:
    mutant = copy.deepcopy(document)
    *parents, last = path
    node = mutant
    for part in parents:
        node = node[part]
    if operation == "delete":
        del node[last]
    elif operation == "extra key" and isinstance(node[last], dict):
        node[last]["unexpected"] = value
    else:
        node[last] = value
    return mutant


def _mutations(document: Any) -> st.SearchStrategy:
    return st.tuples(
        st.sampled_from(list(paths(document))),
        st.sampled_from(["replace", "replace", "delete", "extra key"]),
        st.sampled_from(HOSTILE),
    )


class _Anything:
    """Stands for a matplotlib figure or axes: every method takes anything and returns one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return _Anything()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Anything()

    def subplots(self, rows: int = 1, columns: int = 1, **_: Any) -> Any:
        count = rows * columns
        return _Anything() if count == 1 else [_Anything() for _ in range(count)]

    def savefig(self, path: Any, **_: Any) -> None:
        Path(path).write_bytes(b"")


@pytest.fixture(scope="module")
def quick_figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The plot functions run on every mutant (reading every value they plot) with matplotlib's
    figures replaced by :class:`_Anything`: a real figure's axes take ~0.1 s to build, which
    would allow some tens of mutations in the time budget, not hundreds.
    test_report_of_mutants_with_real_figures runs real ones (slow)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mpcore.face.plots.Figure", _Anything)
        yield tmp_path_factory.mktemp("mutants")


@pytest.fixture(scope="module")
def unsaved_figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Real matplotlib figures, laid out and drawn up to the file (not rasterised)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mpcore.face.plots._save", lambda figure, path: Path(path))
        yield tmp_path_factory.mktemp("mutants-real")


def _report_survives(document: Any, name: str, folder: Path, capsys) -> None:
    path = folder / name
    path.write_text(json.dumps(document, allow_nan=True))
    code, printed, err = report(path, folder / "out", capsys)
    if code == 0:
        assert printed and not err
    else:
        assert_refused(code, err)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(mutation=_mutations(real_run()))
def test_report_of_a_mutated_results_json_renders_or_refuses(
    mutation, quick_figures, capsys
) -> None:
    path, operation, value = mutation
    _report_survives(
        mutate(real_run(), path, operation, value), "results.json", quick_figures, capsys
    )


def _plain() -> Any:
    return json.loads(PLAIN_BENCHMARK.read_text())


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(mutation=_mutations(_plain()))
def test_report_of_a_mutated_pytest_benchmark_json_renders_or_refuses(
    mutation, quick_figures, capsys
) -> None:
    path, operation, value = mutation
    _report_survives(mutate(_plain(), path, operation, value), "bench.json", quick_figures, capsys)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    mutation=st.one_of(
        st.tuples(st.just("results.json"), _mutations(real_run())),
        st.tuples(st.just("bench.json"), _mutations(_plain())),
    )
)
def test_report_of_mutants_with_real_figures(mutation, unsaved_figures, capsys) -> None:
    name, (path, operation, value) = mutation
    document = real_run() if name == "results.json" else _plain()
    _report_survives(mutate(document, path, operation, value), name, unsaved_figures, capsys)


def test_a_mutation_reaches_the_values_the_report_reads() -> None:
    """The mutations are of the fields that matter: the step times of both kinds of file."""
    assert ("configurations", 0, "result", "ms_per_step") in set(paths(real_run()))
    assert ("benchmarks", 0, "stats", "median") in set(paths(_plain()))
    assert os.path.getsize(REAL_RUN) < 200_000


def test_a_run_whose_worker_reports_a_zero_step_time_saves_it_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through run_all with a stand-in worker: the zero-time configuration is failed with the
    reason, not repeated, the other one finishes, and the saved file is valid."""
    from mpcore.run import plan as planning

    finished = real_run()["configurations"]
    calls: list[str] = []

    def run_configuration(
        plan: Any, config: dict[str, str], workdir: Path, repeat: int | None = None
    ) -> dict[str, Any]:
        name = planning.name_of(config)
        calls.append(name)
        record = copy.deepcopy(next(r for r in finished if r["name"] == name))
        del record["repeats"]
        if name.startswith("mixed_bfloat16"):
            record["result"]["ms_per_step"] = 0.0
        return record

    monkeypatch.setattr(planning, "run_configuration", run_configuration)
    configs = [{"precision": p, "xla": "off"} for p in ("float32", "mixed_bfloat16")]
    document = real_run()
    document["configurations"] = []
    plan = planning.RunPlan(tmp_path, tmp_path / "data", document["settings"], configs, repeats=2)
    assert planning.run_all(plan, document, announce=lambda _: None)
    # the warm-up, then the interleaved repeats without the failed configuration's second
    assert calls == [
        "float32+xla_off",
        "float32+xla_off",
        "mixed_bfloat16+xla_off",
        "float32+xla_off",
    ]
    saved = files.read_results(tmp_path / "results.json")
    statuses = {r["name"]: (r["status"], r["reason"]) for r in saved["configurations"]}
    assert statuses["float32+xla_off"] == ("ok", None)
    status, reason = statuses["mixed_bfloat16+xla_off"]
    assert status == "failed" and "ms_per_step' should be a number > 0, found 0.0" in reason
