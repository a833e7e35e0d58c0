"""The third adversarial pass on ``mpbench run``'s store and ``mpbench report``: a hard link in
the data, another project's pytest-benchmark file, the mode and durability of results.json, and
the two ship layouts. (Hostile results.json files: tests/test_results_schema.py.)

Each numbered test failed on the code before the fix. In-process through
``mpcore.face.cli.main``; the one real training run is marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mpcore.data.ships import LAYOUTS, csv_path, images_dir
from mpcore.data.synthetic import write_synthetic_ships
from mpcore.face.cli import main
from mpcore.run import files

pytest_plugins = ["pytester"]

PER_CLASS = 6  # 30 images: 25 training, 5 validation (one per class)

#: A plain project's benchmarks (no mpbench in it): what another team would time.
PLAIN_PROJECT = """
import pytest


def fibonacci(n):
    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)


def test_fibonacci(benchmark):
    assert benchmark(fibonacci, 12) == 144


@pytest.mark.benchmark(group="sorting")
@pytest.mark.parametrize("size", [10, 1000])
def test_sorted(benchmark, size):
    assert benchmark(sorted, list(range(size, 0, -1)))[0] == 1
"""


@pytest.fixture(scope="module")
def tiny_ships(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_ships(
        tmp_path_factory.mktemp("ships3"), per_class=PER_CLASS, image_size=32
    )


@pytest.fixture
def ships(tiny_ships: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_ships, tmp_path / "ships"))


@pytest.fixture
def invoke(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    def run(argv: list[str]) -> tuple[int, str, str]:
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line(code: int, err: str, command: str, *expected: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mpbench {command}: error: "), err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``mpbench run`` up to its plan (data read, checked and described), with the training
    replaced by nothing: the documents it would have run are collected."""
    from mpcore.run import plan as planning

    planned: list[dict[str, Any]] = []

    def run_all(plan: Any, document: dict[str, Any], announce: Any = print) -> bool:
        planned.append(document)
        document["status"] = "complete"
        return True

    monkeypatch.setattr(planning, "run_all", run_all)
    for name in ("TF_CONFIG", "MPBENCH_FAULT", "MPBENCH_WORKER_FAULT"):
        monkeypatch.delenv(name, raising=False)
    return planned


def run_argv(data: Path, out: Path) -> list[str]:
    argv = ["run", "--profile", "quick", "--data", str(data), "--precision", "float32"]
    return [
        *argv,
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]


# --------------------------------------------------------------------------------------------
# 2: a hard link to a listed image is the same file


def test_2_a_hard_link_to_a_listed_image_is_refused(ships: Path, tmp_path: Path, invoke) -> None:
    folder = images_dir(ships)
    first = sorted(folder.iterdir())[0]
    os.link(first, folder / "copy.jpg")
    with open(csv_path(ships), "a") as table:
        table.write("copy.jpg,1\n")
    out = tmp_path / "out"
    code, _, err = invoke(run_argv(ships, out))
    one_line(code, err, "run", "image 'copy.jpg' is the same file as", f"'{first.name}' on line")
    assert not out.exists()


def test_2_a_copy_of_an_image_is_not_the_same_file(ships: Path) -> None:
    """Same bytes, another file: not refused (only one file under two names is)."""
    from mpcore.data.ships import read_ship_index

    folder = images_dir(ships)
    shutil.copy(sorted(folder.iterdir())[0], folder / "copy.jpg")
    with open(csv_path(ships), "a") as table:
        table.write("copy.jpg,1\n")
    assert len(read_ship_index(ships)) == 5 * PER_CLASS + 1


# --------------------------------------------------------------------------------------------
# 4: another project's pytest-benchmark file


@pytest.fixture
def plain_benchmarks(pytester: pytest.Pytester) -> tuple[Path, Path]:
    """A real pytest-benchmark run of a plain project, in-process: its ``--benchmark-json``
    file and its ``.benchmarks`` autosave folder."""
    pytester.makepyfile(test_plain=PLAIN_PROJECT)
    saved = pytester.path / "plain.json"
    storage = pytester.path / ".benchmarks"
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-p", "no:random_order",
        f"--benchmark-json={saved}", "--benchmark-autosave", f"--benchmark-storage={storage}",
        "--benchmark-max-time=0.0002", "--benchmark-min-rounds=5", "--benchmark-warmup=off",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    return saved, storage


def test_4_report_of_another_projects_pytest_benchmark_file(
    plain_benchmarks: tuple[Path, Path], tmp_path: Path, invoke
) -> None:
    saved, storage = plain_benchmarks
    benchmarks = json.loads(saved.read_text())["benchmarks"]
    for source in (saved, storage):
        out = tmp_path / source.name
        code, printed, err = invoke(["report", str(source), "--out", str(out)])
        assert code == 0, err
        assert "?" not in printed
        header = printed.splitlines()[0].split()
        assert header[:3] == ["name", "group", "median"] and "IQR" in header and "rounds" in header
        for bench in benchmarks:
            line = next(row for row in printed.splitlines() if row.startswith(bench["name"] + " "))
            assert str(bench["stats"]["rounds"]) == line.split()[-1]
        rows = (out / "benchmark.csv").read_text().splitlines()
        assert rows[0] == "name,group,median_s,iqr_s,rounds"
        medians = {row.split(",")[0]: float(row.split(",")[2]) for row in rows[1:]}
        if source == saved:  # the folder's newest file is another run of the same tests
            assert medians == {b["name"]: b["stats"]["median"] for b in benchmarks}
        else:
            assert set(medians) == {b["name"] for b in benchmarks}


def test_4_a_pytest_benchmark_file_without_timings_is_refused(tmp_path: Path, invoke) -> None:
    saved = tmp_path / "untimed.json"
    saved.write_text(json.dumps({"benchmarks": [{"name": "test_x", "group": None}]}))
    code, _, err = invoke(["report", str(saved), "--out", str(tmp_path / "out")])
    one_line(
        code, err, "report", f"{saved}: no benchmark in this pytest-benchmark file has stats.median"
    )


# --------------------------------------------------------------------------------------------
# 5: results.json readable as the umask allows, its folder fsynced after the rename


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    before = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(before)


def _document() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "data" / "small_run_results.json").read_text())


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_5_results_json_is_as_readable_as_the_umask_allows(
    tmp_path: Path, umask: Callable[[int], int], mask: int
) -> None:
    umask(mask)
    files.save_results(tmp_path / "results.json", _document(), announce=lambda _: None)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o666 & ~mask


def test_5_the_folder_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(descriptor: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file"
        events.append(f"fsync {kind} {os.fstat(descriptor).st_ino}")
        fsync(descriptor)

    def recorded_replace(source: Any, target: Any) -> None:
        replace(source, target)
        events.append("rename")

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    files.save_results(tmp_path / "results.json", _document(), announce=lambda _: None)
    folder = f"fsync folder {tmp_path.stat().st_ino}"
    assert events[-2:] == ["rename", folder], events
    assert events[0].startswith("fsync file"), events


# --------------------------------------------------------------------------------------------
# 8: both ship layouts, and what was looked for when neither is there


def repository_layout(ships: Path, root: Path) -> Path:
    """A copy of ``ships`` laid out as the seed article's repository keeps its data:
    ``Data/train.csv`` beside ``Data/train/*.jpg``."""
    data = root / "Data"
    shutil.copytree(images_dir(ships), data / "train")
    shutil.copy(csv_path(ships), data / "train.csv")
    return data


@pytest.mark.parametrize("layout", ["train/train.csv + train/images/", "train.csv + train/"])
def test_8_both_ship_layouts_are_read(
    layout: str, tiny_ships: Path, tmp_path: Path, no_training: list, invoke
) -> None:
    data = repository_layout(tiny_ships, tmp_path) if layout == "train.csv + train/" else tiny_ships
    assert layout in [found.describe() for found in LAYOUTS]
    code, printed, err = invoke(run_argv(data, tmp_path / "out"))
    assert code == 0, err
    line = next(line for line in printed.splitlines() if line.startswith("data: "))
    assert f"layout {layout};" in line and "25 training, 5 validation images" in line, line
    document = no_training[0]
    assert document["data"]["root"] == str(data.resolve())
    assert document["data"]["images"] == 5 * PER_CLASS


def test_8_neither_layout_says_what_was_looked_for(tmp_path: Path, invoke) -> None:
    data = tmp_path / "Data"
    (data / "train").mkdir(parents=True)
    code, _, err = invoke(run_argv(data, tmp_path / "out"))
    one_line(
        code,
        err,
        "run",
        f"{data}/train/train.csv: file not found",
        "has neither train/train.csv (images in train/images/) nor train.csv (images in train/)",
    )


@pytest.mark.slow
def test_5_8_a_real_run_on_the_repository_layout(
    tiny_ships: Path, tmp_path: Path, umask: Callable[[int], int], invoke
) -> None:
    """The article's repository layout trains end to end, and its results.json is readable by
    the group (umask 027) though mkstemp makes 0600."""
    data = repository_layout(tiny_ships, tmp_path)
    umask(0o027)
    out = tmp_path / "out"
    code, printed, err = invoke(run_argv(data, out))
    assert code == 0, err
    assert "layout train.csv + train/;" in printed
    document = files.read_results(out / "results.json")
    assert [r["status"] for r in document["configurations"]] == ["ok"]
    assert stat.S_IMODE((out / "results.json").stat().st_mode) == 0o640
