"""``mpbench run`` and ``mpbench report`` end to end, with tiny settings.

The session's quick run (tests/scenarios.py) trains four configurations on 40 generated images;
the second is made to fail (injected out-of-memory) and the worker of the last kills itself (as
the kernel's OOM killer would), so the same run proves the results of the finished ones, that a
failure does not stop the others, and how each kind of failure is reported. Ctrl-C is sent to a
real ``mpbench run`` process.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from scenarios import QUICK_CRASHING, QUICK_FAILING, QUICK_OK, QUICK_PRECISIONS

from mpcore.report import RUN_COLUMNS, run_table
from mpcore.run.schema import SCHEMA

#: The Ctrl-C test's own run: generated data, 30 images, two epochs.
TINY = (
    "--profile",  # explicit: the default profile depends on the machine
    "quick",
    "--data",
    "synthetic",
    "--synthetic-per-class",
    "6",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "2",
    "--repeats",  # one run each: repeats have their own tests (test_run_repeats.py)
    "1",
)
RUN_PRECISIONS = QUICK_PRECISIONS
FAILING = QUICK_FAILING
CRASHING = QUICK_CRASHING
OK_NAMES = QUICK_OK


def test_run_prints_profile_progress_and_table(quick_run) -> None:
    assert quick_run.code == 1, quick_run.stderr  # one configuration failed
    lines = quick_run.stdout.splitlines()
    assert lines[0] == "profile quick: chosen with --profile"
    assert "[float32+xla_off] Epoch 1/2" in lines
    assert any(line.startswith("[float32+xla_off] 4/4 - ") for line in lines)
    assert any(
        line.startswith("[1/4] float32+xla_off: finished in")
        and line.endswith("next: mixed_bfloat16+xla_off")
        for line in lines
    )
    assert any(
        line.startswith("[2/4] mixed_bfloat16+xla_off: FAILED") and "out of memory" in line
        for line in lines
    )
    assert any(line.startswith("[3/4] mixed_float16+xla_off: finished in") for line in lines)
    assert any(
        line.startswith("[4/4] amp_rewrite+xla_off: FAILED")
        and "worker killed by SIGKILL (see logs/amp_rewrite+xla_off.log)" in line
        for line in lines
    )
    start = next(i for i, line in enumerate(lines) if line.startswith("configuration "))
    header = " ".join(lines[start : start + 2])
    for _, title, _ in RUN_COLUMNS:  # two-line headers: every word is on the first two lines
        assert all(word in header for word in title.split()), title
    assert "Traceback" not in quick_run.stderr


def test_results_json_records_every_configuration(quick_run) -> None:
    document = quick_run.document
    assert document["schema"] == SCHEMA
    assert document["status"] == "complete"
    assert document["planned"] == [f"{p}+xla_off" for p in RUN_PRECISIONS]
    assert document["settings"]["image_size"] == 32
    assert document["settings"]["epochs"] == 2
    assert document["data"]["synthetic"] is False
    assert document["data"]["images"] == 40
    assert document["machine"]["versions"]["tensorflow"]
    assert document["command"][:2] == ["mpbench", "run"]
    records = {record["name"]: record for record in document["configurations"]}
    assert list(records) == document["planned"]
    failed = records[FAILING]
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("out of memory")
    assert failed["result"] is None
    crashed = records[CRASHING]
    assert crashed["status"] == "failed" and crashed["exit_code"] == -9
    assert crashed["reason"] == f"worker killed by SIGKILL (see logs/{CRASHING}.log)"
    for name in OK_NAMES:
        record = records[name]
        assert record["status"] == "ok"
        result = record["result"]
        assert result["config"]["precision"] == name.split("+")[0]
        assert len(result["epoch_seconds"]) == len(result["loss"]) == 2
        assert len(result["val_accuracy"]) == 2
        assert result["ms_per_step"] > 0 and result["images_per_second"] > 0
        assert result["train_images"] + result["validation_images"] == 40
        assert record["telemetry"]["peak_rss_bytes"] > 50 * 2**20
        assert record["wall_seconds"] > result["first_epoch_seconds"]
    assert records["float32+xla_off"]["result"]["loss_scale"] is None
    scales = records["mixed_float16+xla_off"]["result"]["loss_scale"]
    assert len(scales) == 2 and all(scale >= 1 for scale in scales)


def test_results_csv_has_a_row_per_configuration(quick_run) -> None:
    out = quick_run.out
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["configuration"] for row in rows] == [f"{p}+xla_off" for p in RUN_PRECISIONS]
    by_name = {row["configuration"]: row for row in rows}
    assert float(by_name["float32+xla_off"]["speedup"]) == pytest.approx(1.0)
    assert float(by_name["mixed_float16+xla_off"]["ms_per_step"]) > 0
    assert float(by_name["mixed_float16+xla_off"]["final_loss_scale"]) >= 1
    assert by_name[FAILING]["status"].startswith("failed: out of memory")
    assert by_name[FAILING]["ms_per_step"] == ""


def test_every_plot_is_a_readable_image(quick_run) -> None:
    out = quick_run.out
    names = sorted(path.name for path in out.glob("*.png"))
    # The GPU telemetry plot exactly when NVML sampled something (never on a CPU-only machine).
    document = json.loads((out / "results.json").read_text())
    sampled = any((r.get("telemetry") or {}).get("gpu_series") for r in document["configurations"])
    expected = ["curves.png", *(["gpu_telemetry.png"] if sampled else []), "step_time.png"]
    assert names == [*expected, "time_vs_loss.png"]
    for name in names:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            width, height = image.size
            assert width >= 600 and height >= 200, (name, image.size)
            # Not a blank canvas: a plot has many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20


def _scalars(folder: Path) -> dict[str, list[float]]:
    import tensorflow as tf

    values: dict[str, list[float]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else value.simple_value
                )
                values.setdefault(value.tag, []).append(number)
    return values


def test_tensorboard_events_hold_the_epoch_metrics(quick_run) -> None:
    out = quick_run.out
    document = json.loads((out / "results.json").read_text())
    for record in document["configurations"]:
        if record["status"] != "ok":
            continue
        board = out / "tensorboard" / record["name"]
        train = _scalars(board / "train")
        validation = _scalars(board / "validation")
        assert train["epoch_loss"] == pytest.approx(record["result"]["loss"], rel=1e-5)
        assert train["epoch_accuracy"] == pytest.approx(record["result"]["accuracy"], rel=1e-5)
        assert validation["epoch_loss"] == pytest.approx(record["result"]["val_loss"], rel=1e-5)
    assert not (out / "tensorboard" / FAILING / "train").exists()


def test_report_reproduces_the_table(quick_run, tmp_path: Path, invoke) -> None:
    out = quick_run.out
    code, stdout, err = invoke(["report", str(out), "--out", str(tmp_path)])
    assert code == 0, err
    table = run_table(quick_run.document)
    assert table in quick_run.stdout
    assert stdout.startswith(table)
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [
        "curves.png",
        "step_time.png",
        "time_vs_loss.png",
    ]
    assert (tmp_path / "results.csv").read_text() == (out / "results.csv").read_text()


def _wait_for_finished_configuration(results: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        try:
            if json.loads(results.read_text())["configurations"]:
                return
        except (OSError, ValueError, KeyError):
            pass  # not written yet
        time.sleep(0.2)
    raise AssertionError("no configuration finished within 240 s")


@pytest.mark.slow
def test_sigint_keeps_finished_configurations(tmp_path: Path, cache: Path, cli_env) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mpcore", "run", *TINY, "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--precision", "float32", "mixed_float16"],
        env=cli_env(cache),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_finished_configuration(out / "results.json", process)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    document = json.loads((out / "results.json").read_text())
    assert document["status"] == "interrupted"
    assert [r["name"] for r in document["configurations"]] == ["float32+xla_off"]
    assert document["configurations"][0]["status"] == "ok"
    assert run_table(document) in stdout
    assert "interrupted" in stdout
    assert f"mpbench run --resume --out {out}" in stdout
    assert "Traceback" not in stderr
    assert not list(out.glob(".results.json.*")), "a temporary file was left behind"
