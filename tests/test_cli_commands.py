"""``mpbench doctor``, ``numerics``, ``report`` of a benchmark file and bad input, run in-process
(TensorFlow is already imported by the test session), and the runner's building blocks."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from mpcore.face.doctor import precision_verdicts
from mpcore.face.run_cmd import choose_profile
from mpcore.names import PRECISIONS, parse_names
from mpcore.probe.machine import GpuInfo
from mpcore.run.files import RunSetupError, write_json_atomic
from mpcore.run.plan import RunPlan
from mpcore.run.schema import RESULTS_FILE, SCHEMA
from mpcore.run.worker import PrefixedStream

# --------------------------------------------------------------------------------------------
# doctor


@pytest.mark.cpu(reason="states the doctor's verdicts for a machine without a GPU")
def test_doctor_on_a_cpu_says_mixed_precision_will_not_speed_up(invoke, monkeypatch) -> None:
    # A CPU without AVX512-BF16/AMX (the verdict for one with them is tested on its own below):
    # the host's real flags must not decide what this test states.
    monkeypatch.setattr("mpcore.face.doctor.cpu_flags", lambda: frozenset())
    code, out, err = invoke(["doctor", "--model", "small", "--batch-size", "50"])
    assert code == 0, err
    # The pin plays "no GPU" through MPBENCH_FAKE_GPU=none, which the doctor marks as simulated.
    lines = [line.removesuffix(" (simulated by MPBENCH_FAKE_GPU)") for line in out.splitlines()]
    assert lines[0].startswith("TensorFlow ") and "Keras " in lines[0]
    assert "GPUs: none visible to TensorFlow" in lines
    assert (
        "mixed_float16   not expected to speed up: CPU only: float16 is emulated and slower"
        in lines
    )
    assert any(line.startswith("amp_rewrite     not expected to speed up") for line in lines)
    assert (
        "verdict: no GPU is visible to TensorFlow; mixed precision is not expected to speed up "
        "training on this machine" in lines
    )
    assert "  layer predictions: units=5" in lines
    assert "  batch size 50: not a multiple of 8 (try 48 or 56)" in lines


@pytest.mark.parametrize(
    ("gpu", "float16", "bfloat16"),
    [
        (GpuInfo("Tesla P100", (6, 0)), False, False),
        (GpuInfo("Tesla V100", (7, 0)), True, False),
        (GpuInfo("A100", (8, 0)), True, True),
    ],
)
def test_gpu_verdicts_follow_compute_capability(gpu: GpuInfo, float16: bool, bfloat16: bool):
    verdicts = {v.precision: v for v in precision_verdicts((gpu,), frozenset())}
    assert list(verdicts) == list(PRECISIONS)
    assert verdicts["float32"].speeds_up is None
    assert verdicts["mixed_float16"].speeds_up is float16
    assert verdicts["amp_rewrite"].speeds_up is float16
    assert verdicts["mixed_bfloat16"].speeds_up is bfloat16
    assert gpu.name in verdicts["mixed_float16"].why


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2"}, None),
        ({"avx2", "amx_bf16"}, "amx_bf16"),
        ({"avx512_bf16"}, "avx512_bf16"),
    ],
)
def test_cpu_bfloat16_verdict_depends_on_native_instructions(flags: set, native) -> None:
    verdicts = {v.precision: v for v in precision_verdicts((), frozenset(flags))}
    assert verdicts["mixed_bfloat16"].speeds_up is (native is not None)
    if native:
        assert native in verdicts["mixed_bfloat16"].why
    assert verdicts["mixed_float16"].speeds_up is False


# --------------------------------------------------------------------------------------------
# numerics


def test_numerics_reports_both_scales_and_writes_histograms(invoke, tmp_path: Path) -> None:
    argv = ["numerics", "--model", "small", "--image-size", "32", "--batch-size", "4"]
    code, out, err = invoke([*argv, "--out", str(tmp_path)])
    assert code == 0, err
    assert "loss scale 1 (no loss scaling): of " in out
    assert "loss scale 32768 (LossScaleOptimizer's initial scale): of " in out
    reports = json.loads((tmp_path / "numerics.json").read_text())
    assert [report["loss_scale"] for report in reports] == [1.0, 32768.0]
    unscaled, scaled = (report["overall"] for report in reports)
    assert unscaled["count"] == scaled["count"] > 1000
    # Scaling up by 2**15 can only move small gradients out of float16's underflow range.
    assert scaled["underflow"] <= unscaled["underflow"]
    for scale in ("1", "32768"):
        with Image.open(tmp_path / f"gradient_histogram_scale_{scale}.png") as image:
            assert image.size[0] >= 600 and image.size[1] >= 300


# --------------------------------------------------------------------------------------------
# report of a pytest-benchmark file


def test_report_renders_a_pytest_benchmark_file(invoke, tmp_path: Path) -> None:
    def bench(precision: str, xla: str, ms: float) -> dict:
        info = {"precision": precision, "xla": xla, "ms_per_step": ms, "images_per_second": 1e3}
        return {"group": "small 32px batch 8 cpu", "name": "test_train_step", "extra_info": info}

    saved = tmp_path / "0001_run.json"
    saved.write_text(
        json.dumps(
            {
                "machine_info": {},
                "benchmarks": [
                    bench("float32", "off", 20.0),
                    bench("mixed_float16", "off", 10.0),
                    bench("float32", "jit", 16.0),
                ],
            }
        )
    )
    code, out, err = invoke(["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert code == 0, err
    assert "2.00x" in out and "1.25x" in out
    with Image.open(tmp_path / "r" / "benchmark_step_time.png") as image:
        assert image.size[0] >= 600
    rows = (tmp_path / "r" / "benchmark.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("group,precision,xla,ms_per_step")


# --------------------------------------------------------------------------------------------
# bad input: exit status 2, one line on stderr, no traceback, nothing created


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # The bad values of run's options: tests/test_reliability.py (OPTION_CASES), which also
        # proves that a saved run is left as it was.
        (["run", "--data", "no-such-folder"], "data folder not found: no-such-folder"),
        (["run", "--resume", "--out", "fresh"], "--resume: fresh holds no results.json"),
        (["report", "nothing-here"], "not found: nothing-here"),
        (["doctor", "--model", "vgg"], "unknown --model 'vgg'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], expected: str, invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("mpbench") and expected in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no output folder, no cache written


def test_report_of_a_malformed_results_file_is_one_line(invoke, tmp_path: Path) -> None:
    broken = {"schema": SCHEMA, "configurations": [{"name": "float32+xla_off", "status": "ok"}]}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(broken))
    code, _, err = invoke(["report", str(tmp_path)])
    assert code == 2
    assert err.strip() == (
        f"mpbench report: error: {tmp_path / RESULTS_FILE}: key 'configurations[0].result' "
        "should be an object, found null"
    )


def test_batch_larger_than_the_training_split_is_refused(invoke, ship_root, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["run", "--profile", "quick", "--data", str(ship_root), "--batch-size", "1000"]
    argv += ["--out", str(out)]
    code, _, err = invoke(argv)
    assert code == 2
    assert err.strip() == (
        "mpbench run: error: --batch-size 1000 is larger than the training split (95 images of 120)"
    )
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# building blocks


def test_parse_names_accepts_lists_commas_and_all() -> None:
    assert parse_names(["mixed_float16,float32", "float32"], PRECISIONS, "--precision") == [
        "mixed_float16",
        "float32",
    ]
    assert parse_names(["all"], PRECISIONS, "--precision") == list(PRECISIONS)
    assert parse_names(None, PRECISIONS, "--precision") == []


@pytest.mark.parametrize("values", [[""], [","], [" , ", ""]])
def test_a_name_list_that_names_nothing_is_refused(values: list[str], invoke) -> None:
    with pytest.raises(ValueError, match="--precision: no value given"):
        parse_names(values, PRECISIONS, "--precision")
    # Through the command line too: one line, exit 2, before TensorFlow trains anything.
    code, _, err = invoke(["run", "--precision", *values, "--out", "unused"])
    assert code == 2 and err.count("\n") == 1
    assert "--precision: no value given" in err


def test_profile_follows_the_gpu_unless_chosen() -> None:
    assert choose_profile(None, 0)[0] == "quick"
    assert choose_profile(None, 2)[0] == "seed"
    assert choose_profile("quick", 2) == ("quick", "chosen with --profile")
    assert "so the small model at a small size" in choose_profile(None, 0)[1]
    # A model given with --model is the one trained, not the profile's.
    reason = choose_profile(None, 0, "mymodels:build")[1]
    assert reason.endswith("so the CPU's short settings for --model mymodels:build")


def test_write_json_atomic_replaces_whole_files_only(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"n": 1})
    write_json_atomic(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 2}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"n": object()})  # fails mid-write
    assert json.loads(path.read_text()) == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_prefixed_stream_prefixes_every_line_and_redraw() -> None:
    target = io.StringIO()
    stream = PrefixedStream(target, "[cfg] ")
    for piece in ("Epoch 1/2\n", "1/4 ..", "\b\b\r2/4 ..", "\n", "done\n"):
        stream.write(piece)
    assert target.getvalue() == "[cfg] Epoch 1/2\n[cfg] 1/4 ..\b\b\r[cfg] 2/4 ..\n[cfg] done\n"


def _saved_run(tmp_path: Path, settings: dict) -> RunPlan:
    plan = RunPlan(
        out=tmp_path,
        data_root=tmp_path / "data",
        settings=settings,
        configs=[
            {"precision": "float32", "xla": "off"},
            {"precision": "amp_rewrite", "xla": "off"},
        ],
    )
    write_json_atomic(
        tmp_path / RESULTS_FILE,
        {
            "schema": SCHEMA,
            "status": "interrupted",
            "settings": settings,
            "data": {"root": str(tmp_path / "data")},
            "configurations": [
                {**_gpu_record("float32+xla_off", 100.0, 1.0), "config": plan.configs[0]},
                {"name": "amp_rewrite+xla_off", "status": "failed", "config": plan.configs[1]},
            ],
        },
    )
    return plan


def test_resume_keeps_every_record(tmp_path: Path) -> None:
    """Append-only: the failed record stays until its rerun replaces it."""
    plan = _saved_run(tmp_path, {"model": "small", "epochs": 2})
    document = plan.resumed_document()
    names = ["float32+xla_off", "amp_rewrite+xla_off"]
    assert [r["name"] for r in document["configurations"]] == names
    assert document["status"] == "running"
    changed = RunPlan(plan.out, plan.data_root, {"model": "small", "epochs": 3}, plan.configs)
    with pytest.raises(RunSetupError, match="different epochs"):
        changed.resumed_document()


def _gpu_record(name: str, ms_per_step: float, memory_gib: float) -> dict:
    series = [
        {
            "t": 0.1 * i,
            "memory_used_bytes": min(i, 20) / 20 * memory_gib * 2**30,
            "utilization_percent": 0.0 if i < 5 else 90.0 + i % 7,
        }
        for i in range(60)
    ]
    return {
        "name": name,
        "status": "ok",
        "result": {
            "epoch_seconds": [5.0, 2.0, 2.0],
            "first_epoch_seconds": 5.0,
            "steady_epoch_seconds": 2.0,
            "ms_per_step": ms_per_step,
            "images_per_second": 1000.0 / ms_per_step,
            "loss": [1.5, 1.0, 0.8],
            "accuracy": [0.4, 0.6, 0.7],
            "val_loss": [1.6, 1.1, 0.9],
            "val_accuracy": [0.3, 0.5, 0.6],
            "loss_scale": None,
        },
        "telemetry": {"tf_peak_memory_bytes": int(memory_gib * 2**30), "gpu_series": series},
    }


def test_gpu_runs_get_a_telemetry_plot_and_gpu_peak_memory(tmp_path: Path) -> None:
    from mpcore.report import render_run, run_rows, run_table

    document = {
        "schema": SCHEMA,
        "settings": {"model": "resnet50", "image_size": 224, "batch_size": 80, "epochs": 3},
        "configurations": [
            _gpu_record("float32+xla_off", 200.0, 6.0),
            _gpu_record("mixed_float16+xla_off", 100.0, 3.5),
        ],
    }
    files = render_run(document, tmp_path)
    assert tmp_path / "gpu_telemetry.png" in files
    with Image.open(tmp_path / "gpu_telemetry.png") as image:
        assert image.size[0] >= 800 and image.size[1] >= 500
    rows = run_rows(document)
    assert [row["speedup"] for row in rows] == [1.0, 2.0]
    assert [row["peak_memory_mib"] for row in rows] == [6 * 1024, 3.5 * 1024]
    assert "peak memory: TensorFlow peak GPU memory" in run_table(document)
    assert "ms/step: steady model.fit epochs" in run_table(document)  # what was timed


class _FullDisk:
    """A real file handle whose writes fail as on a full disk (opening still truncates)."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_write_json_atomic_keeps_the_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A write or fsync that fails after serialising (disk full, I/O error) leaves the old file
    whole and no temporary file: a writer that wrote in place would have truncated it."""
    path = tmp_path / "results.json"
    write_json_atomic(path, {"n": 1, "runs": list(range(50))})
    old = path.read_text()
    if failing == "fsync":

        def broken_fsync(descriptor: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", broken_fsync)
    else:
        real_open, real_fdopen = open, os.fdopen
        monkeypatch.setattr("builtins.open", lambda *a, **k: _FullDisk(real_open(*a, **k)))
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(path, {"n": 2})
    monkeypatch.undo()
    assert path.read_text() == old
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
