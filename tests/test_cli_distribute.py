"""``mpbench run --strategy/--workers/--cpu-replicas`` end to end, with tiny settings.

A distributed run schedules each configuration twice, without a strategy (the one-replica
baseline) and under the strategy, and the results gain replicas, the global batch, images/s per
replica and the scaling efficiency against that baseline.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
from scenarios import MIRRORED_PRECISION, WORKERS_PRECISION, run_in_process

from mpcore.face.cli import main
from mpcore.report import SCALING_COLUMNS

pytest_plugins = ("pytester",)

#: 30 generated images: 25 training, 5 validation; batch 2 per replica.
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
    "2",
    "--epochs",
    "1",
    "--repeats",
    "1",
)


def assert_scaling(record: dict, baseline: dict, replicas: int) -> None:
    """The distributed record's scaling figures, recomputed from the two results."""
    assert record["status"] == "ok", record["reason"]
    assert baseline["status"] == "ok", baseline["reason"]
    result, scaling = record["result"], record["scaling"]
    assert result["replicas"] == scaling["replicas"] == replicas
    assert result["global_batch"] == scaling["global_batch"] == 2 * replicas
    assert baseline["result"]["replicas"] == 1
    assert baseline["result"]["global_batch"] == 2
    assert scaling["baseline"] == baseline["name"]
    assert scaling["images_per_second_per_replica"] == pytest.approx(
        result["images_per_second"] / replicas
    )
    expected = result["images_per_second"] / (replicas * baseline["result"]["images_per_second"])
    assert scaling["scaling_efficiency"] == pytest.approx(expected)
    assert scaling["scaling_efficiency"] > 0
    assert all(math.isfinite(value) for value in result["loss"])


MIRRORED = f"{MIRRORED_PRECISION}+xla_off"


def test_mirrored_run_schedules_its_one_replica_baseline(mirrored_run) -> None:
    """The session's mirrored run (tests/scenarios.py): over two logical CPUs."""
    assert mirrored_run.code == 0, mirrored_run.stderr[-3000:]
    document = mirrored_run.document
    assert document["planned"] == [MIRRORED, f"{MIRRORED}@mirrored"]
    assert document["distribution"]["strategy"] == "mirrored"
    assert document["distribution"]["cpu_replicas"] == 2
    records = mirrored_run.records()
    assert records[f"{MIRRORED}@mirrored"]["config"]["strategy"] == "mirrored"
    assert "strategy" not in records[MIRRORED]["config"]


def test_mirrored_results_hold_replicas_global_batch_and_efficiency(mirrored_run) -> None:
    records = mirrored_run.records()
    distributed = records[f"{MIRRORED}@mirrored"]
    assert_scaling(distributed, records[MIRRORED], replicas=2)
    # float32: no loss scale (loss scaling under a strategy: the two-worker run's test below).
    assert distributed["result"]["loss_scale"] is None


def test_mirrored_drops_a_last_batch_smaller_than_the_replicas_with_onednn_on(mirrored_run) -> None:
    """The session's mirrored run trains with oneDNN on (TensorFlow's CPU default; the test
    session turns it off), where BatchNormalization fails on an empty shard. 9 training and 5
    validation images in global batches of 4 over 2 replicas: each last batch holds 1 image,
    which would leave replica 1 an empty shard, so those batches are dropped, and counted out;
    the one-device baseline (batches of 2) keeps them."""
    records = mirrored_run.records()
    distributed = records[f"{MIRRORED}@mirrored"]
    assert distributed["status"] == "ok", distributed["reason"]
    result = distributed["result"]
    assert (result["steps_per_epoch"], result["train_images"]) == (2, 8)
    assert result["validation_images"] == 4
    baseline = records[MIRRORED]["result"]
    assert (baseline["steps_per_epoch"], baseline["train_images"]) == (5, 9)
    assert baseline["validation_images"] == 5


def test_mirrored_table_and_csv_have_the_scaling_columns(mirrored_run) -> None:
    header = mirrored_run.stdout.split("configuration  ", 1)[1].split("---", 1)[0]
    for _, title, _ in SCALING_COLUMNS:
        for word in title.split("\n"):
            assert word in header
    assert "scaling efficiency: images/s / (replicas x images/s" in mirrored_run.stdout
    with open(mirrored_run.out / "results.csv", newline="") as handle:
        rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    distributed = rows[f"{MIRRORED}@mirrored"]
    assert distributed["replicas"] == "2"
    assert distributed["global_batch"] == "4"
    assert float(distributed["scaling_efficiency"]) > 0
    assert rows[MIRRORED]["replicas"] == "1"
    assert rows[MIRRORED]["scaling_efficiency"] == ""


@pytest.mark.cpu(reason="the messages of --cpu-replicas, refused where a GPU is visible")
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--strategy", "ring"], "--strategy: unknown strategy 'ring'; valid: none, mirrored"),
        (["--workers", "2", "--strategy", "mirrored"], "cannot be combined with --strategy"),
        (["--workers", "2", "--strategy", "none"], "cannot be combined with --strategy none"),
        (["--cpu-replicas", "2"], "--cpu-replicas splits the CPU for the mirrored strategy only"),
        (["--strategy", "multiworker"], "strategy 'multiworker' needs TF_CONFIG"),
        (
            ["--strategy", "mirrored", "--cpu-replicas", "2", "--batch-size", "4"],
            "validation split (5 images) is smaller than the global batch (8)",
        ),
        (
            ["--strategy", "mirrored", "--cpu-replicas", "4", "--batch-size", "8"],
            "global batch larger than the training split (25 images)",
        ),
    ],
)
def test_bad_distribution_options_are_one_line_and_exit_2(
    options: list[str], message: str, cache: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("MPBENCH_CACHE", str(cache))
    monkeypatch.delenv("TF_CONFIG", raising=False)
    arguments = ["run", *TINY, "--precision", "float32", "--out", str(tmp_path / "run"), *options]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mpbench run: error: ")
    assert message in error
    assert len(error.splitlines()) == 1
    assert not (tmp_path / "run" / "results.json").exists()


def test_two_local_workers_train_in_sync_and_the_chief_records(workers_run) -> None:
    """The session's two-worker run (tests/scenarios.py): both workers hold identical weights,
    variable by variable (BatchNormalization's moving statistics included), the chief's are
    the record's, every worker process is gone, and the loss scale ran in step."""
    assert workers_run.code == 0, workers_run.stderr[-3000:]
    name = f"{WORKERS_PRECISION}+xla_off"
    records = workers_run.records()
    assert list(records) == [name, f"{name}@multiworker"]
    distributed = records[f"{name}@multiworker"]
    assert_scaling(distributed, records[name], replicas=2)
    result = distributed["result"]
    assert len(result["loss"]) == 2
    # Multi-worker training drops the short last batch: 6 steps of 4 of the 25 images.
    assert result["steps_per_epoch"] == 6
    assert result["train_images"] == 24
    assert len(result["loss_scale"]) == 2
    assert all(math.log2(scale).is_integer() and scale <= 2**15 for scale in result["loss_scale"])
    assert distributed["telemetry"]["peak_rss_bytes"] > 0
    # Both the baseline's lone worker and the cluster's chief are forked from the run's fork
    # server (tests/test_zygote.py: a cluster worker is forked in a session of its own).
    assert records[name]["telemetry"]["worker_start"] == "forked"
    assert distributed["telemetry"]["worker_start"] == "forked"
    workers = distributed["workers"]
    assert [worker["index"] for worker in workers] == [0, 1]
    assert len({worker["pid"] for worker in workers}) == 2
    assert workers[0]["variable_sha256"] == workers[1]["variable_sha256"]
    assert {worker["weights_sha256"] for worker in workers} == {distributed["weights_sha256"]}
    for worker in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(worker["pid"], 0)
    logs = workers_run.out / "logs" / f"{name}@multiworker"
    assert (logs / "worker-0.log").is_file() and (logs / "worker-1.log").is_file()
    assert f"{name}@multiworker" in workers_run.stdout


TINY_BENCH = ("--mp-allow-cpu", "--mp-xla=off", "--mp-image-size=16", "--mp-batch=4")


@pytest.mark.cpu(reason="one unsplit CPU is one device to mirror over")
def test_benchmark_mirrored_is_skipped_with_one_replica(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process collection: this process's TensorFlow sees one CPU device. The plugin is
    # loaded on its own (-p), with a stand-in benchmark that asks for a combination.
    pytester.makepyfile(test_step="def test_step(combination):\n    pass\n")
    monkeypatch.setenv("MPBENCH_FAKE_GPU", "none")
    items, _ = pytester.inline_genitems(
        "-p", "mpcore.bench.plugin", *TINY_BENCH, "--mp-strategy=mirrored"
    )
    reasons = {item.callspec.id: item.get_closest_marker("skip").kwargs["reason"] for item in items}
    # amp_rewrite keeps its own reason (a no-op without a GPU); the CPU-possible ones get ours.
    assert reasons.pop("amp_rewrite-off") != reasons["float32-off"]
    assert set(reasons) == {"float32-off", "mixed_float16-off", "mixed_bfloat16-off", "float8-off"}
    for reason in reasons.values():
        assert reason.startswith(
            "--mp-strategy mirrored needs 2 or more replicas; TensorFlow sees 1"
        )


@pytest.mark.slow
def test_local_workers_skip_bad_images_and_stop_at_the_first_nan_like_one_process(
    tmp_path: Path, cache: Path
) -> None:
    """The multi-worker path runs the same worker as a lone configuration: it leaves out the
    images --skip-bad-images found and its loss guard names configuration, epoch, step and
    loss scale at the first NaN (planted: every weight NaN before step 2)."""
    from mpcore.data.ships import images_dir
    from mpcore.data.synthetic import write_synthetic_ships

    ships = write_synthetic_ships(tmp_path / "ships", per_class=8, image_size=32)
    (images_dir(ships) / "000003.jpg").write_text("not a picture")
    # In-process: the workers are the processes that matter here.
    run = run_in_process(
        [
            *("run", "--profile", "quick", "--data", str(ships), "--image-size", "32"),
            *("--batch-size", "2", "--epochs", "1", "--repeats", "1"),
            *("--precision", "mixed_float16", "--workers", "2", "--skip-bad-images"),
        ],
        tmp_path / "nan",
        cache,
        MPBENCH_FAULT="mixed_float16+xla_off=nan",
    )
    assert run.code == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    document = run.document
    assert [Path(i["path"]).name for i in document["data"]["skipped_images"]] == ["000003.jpg"]
    records = run.records()
    alone, clustered = (
        records["mixed_float16+xla_off"],
        records["mixed_float16+xla_off@multiworker"],
    )
    assert alone["reason"] == (
        "non-finite loss: mixed_float16+xla_off: loss is nan at epoch 1, step 2, loss scale 32768"
    )
    assert clustered["status"] == "failed"
    assert (
        "non-finite loss: mixed_float16+xla_off@multiworker: loss is nan at epoch 1, step 2, "
        "loss scale 32768" in clustered["reason"]
    )
