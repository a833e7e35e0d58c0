"""Right on a GPU host: one capability source honouring ``MPBENCH_FAKE_GPU`` for every decision,
``mpbench doctor --measure``, and the GPU acceptance command's CPU-side parts."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from mpcore.face.cli import build_parser
from mpcore.probe import measure
from mpcore.probe.capability import capability, machine_record
from mpcore.probe.peaks import FAKE_GPU_ENV
from mpcore.train.settings import TrainSettings

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[1]
T4, H100 = "Tesla T4@7.5", "NVIDIA H100 80GB HBM3@9.0"
SIMULATED = f"(simulated by {FAKE_GPU_ENV})"


@pytest.fixture
def tf32_on():
    """TensorFlow's default TF32 state, whatever an earlier test left."""
    import tensorflow as tf

    saved = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(True)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(saved)


# --------------------------------------------------------------------------------------------
# one capability source


def test_a_fake_t4_drives_every_decision(monkeypatch) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, T4)
    cap = capability()
    assert cap.simulated and cap.gpu.name == "Tesla T4" and cap.gpu_count == 1
    assert not cap.tf32_active  # Turing has no TF32
    assert TrainSettings().resolved_deterministic is False  # the GPU default
    assert cap.skip_reason("mixed_bfloat16", "off").startswith("mixed_bfloat16 needs")
    assert cap.skip_reason("mixed_float16", "off") is None
    assert cap.peak_tflops("mixed_float16") == 65.0
    record = machine_record()
    assert record["gpu_simulated"] is True
    assert record["gpus"] == [{"name": "Tesla T4", "compute_capability": "7.5"}]


def test_a_fake_h100_serves_bfloat16_and_notes_tf32(monkeypatch, tf32_on) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, H100)
    cap = capability()
    assert cap.skip_reason("mixed_bfloat16", "off") is None
    assert cap.tf32_active
    assert cap.peak_tflops("float32") == 494.5  # the TF32 peak, not FP32's 67
    assert "TF32" in cap.speedup_note("float32")
    assert cap.tf32_note().startswith("TF32: float32 matmuls and convolutions run as TF32")


def test_no_gpu_and_a_malformed_value(monkeypatch) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, "none")
    cap = capability()
    assert cap.gpus == () and cap.simulated and cap.deterministic_default
    assert TrainSettings().resolved_deterministic is True
    monkeypatch.setenv(FAKE_GPU_ENV, "T4")
    with pytest.raises(ValueError, match=FAKE_GPU_ENV):
        capability()


def test_run_without_options_chooses_seed_for_a_fake_t4_and_says_so(invoke, monkeypatch, tmp_path):
    monkeypatch.setenv(FAKE_GPU_ENV, T4)
    # A missing data folder stops the run right after the profile is chosen.
    code, out, err = invoke(["run", "--data", str(tmp_path / "missing")])
    assert code == 2, err
    first = out.splitlines()[0]
    assert first.startswith("profile seed: 1 GPU(s) visible to TensorFlow")
    assert first.endswith(SIMULATED)


def test_malformed_fake_gpu_is_one_line_for_run_and_doctor(invoke, monkeypatch) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, "T4")
    for argv in (["run"], ["doctor"]):
        code, _, err = invoke(argv)
        assert code == 2
        assert err.count("\n") == 1 and FAKE_GPU_ENV in err


def test_doctor_gives_the_t4_verdicts_marked_simulated(invoke, monkeypatch) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, T4)
    code, out, err = invoke(["doctor"])
    assert code == 0, err
    lines = out.splitlines()
    gpu = next(line for line in lines if line.startswith("GPU 0: Tesla T4"))
    assert "bfloat16 no (8.0+)" in gpu and gpu.endswith(SIMULATED)
    verdicts = {line.split()[0]: line for line in lines if line.endswith(SIMULATED)}
    assert verdicts["mixed_float16"].startswith("mixed_float16   expected to speed up")
    assert verdicts["mixed_bfloat16"].startswith("mixed_bfloat16  not expected to speed up")
    assert "bfloat16 needs compute capability 8.0+" in verdicts["mixed_bfloat16"]


def test_doctor_notes_tf32_for_a_fake_h100(invoke, monkeypatch, tf32_on) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, H100)
    code, out, _ = invoke(["doctor"])
    assert code == 0
    assert any(line.startswith("TF32: float32 matmuls") for line in out.splitlines())
    assert "mixed_bfloat16  expected to speed up" in out


# --------------------------------------------------------------------------------------------
# doctor --measure

TIMING_FIELDS = {"op", "dtype", "shape", "flops", "seconds", "tflops", "peak_tflops", "error"}


@pytest.mark.slow
def test_doctor_measure_json_on_this_machine(invoke) -> None:
    start = time.perf_counter()
    code, out, err = invoke(["doctor", "--measure", "--json"])
    seconds = time.perf_counter() - start
    assert code == 0, err
    assert seconds < 60, f"doctor --measure took {seconds:.0f} s"
    document = json.loads(out)
    assert {"gpus", "gpu_simulated", "tf32_enabled", "verdicts", "measured_verdicts"} <= set(
        document
    )
    assert document["measurements"], "no device was measured"
    for entry in document["measurements"]:
        assert {"device", "name", "tf32", "timings", "ratios"} <= set(entry)
        assert {(t["op"], t["dtype"]) for t in entry["timings"]} == {
            (op, dtype) for op in ("matmul", "conv3x3") for dtype in measure.DTYPES
        }
        for timing in entry["timings"]:
            assert TIMING_FIELDS | {"fraction_of_peak"} <= set(timing)
            if timing["error"] is None:
                assert timing["tflops"] > 0 and timing["seconds"] > 0
        assert set(entry["ratios"]) == {"matmul", "conv3x3"}
        assert set(entry["ratios"]["matmul"]) == {"float16", "bfloat16"}
    # Datasheet peaks exist for GPUs only: on a CPU every peak is unknown (the comparison with a
    # known peak is test_measured_rates_stay_below_a_known_peak's, against a T4's datasheet).
    for entry in document["measurements"]:
        if entry["name"] == "CPU":
            assert all(t["peak_tflops"] is None for t in entry["timings"]), entry["timings"]
    timings = [t for entry in document["measurements"] for t in entry["timings"]]
    assert all(t["fraction_of_peak"] is None for t in timings if t["peak_tflops"] is None)
    for timing in (t for t in timings if t["peak_tflops"] is not None and t["error"] is None):
        assert 0 < timing["tflops"] < timing["peak_tflops"]
        assert timing["fraction_of_peak"] == pytest.approx(timing["tflops"] / timing["peak_tflops"])
    precisions = [v["precision"] for v in document["measured_verdicts"]]
    assert precisions == ["mixed_float16", "mixed_bfloat16"]
    assert all("x float32 (measured: matmul " in v["why"] for v in document["measured_verdicts"])


@pytest.mark.cpu(reason="times the CPU against a T4's datasheet peaks: far below them")
def test_measured_rates_stay_below_a_known_peak(monkeypatch) -> None:
    monkeypatch.setattr(measure, "BUDGET_SECONDS", 0.0)
    timings = measure.measure_device("/CPU:0", "Tesla T4", tf32=False, side=256)
    known = [t for t in timings if t.peak_tflops is not None and t.error is None]
    assert {t.dtype for t in known} == {"float32", "float16"}  # a T4 has no bfloat16 peak
    for timing in known:
        assert 0 < timing.tflops < timing.peak_tflops
        assert timing.fraction_of_peak == pytest.approx(timing.tflops / timing.peak_tflops)


@pytest.mark.parametrize(("ratio", "speeds_up", "words"), [(6.8, True, "tensor cores engaged")])
def test_measured_verdict_rests_on_the_ratio(ratio, speeds_up, words) -> None:
    from mpcore.face.doctor import measured_verdicts

    entry = {"device": "/GPU:0", "ratios": {"matmul": {"float16": ratio, "bfloat16": 0.5}}}
    entry["ratios"]["conv3x3"] = {"float16": ratio, "bfloat16": None}  # bfloat16: no kernel
    float16, bfloat16 = measured_verdicts(entry, frozenset())
    assert float16.speeds_up is speeds_up
    assert f"{words}: float16 runs 6.8x float32" in float16.why
    assert bfloat16.speeds_up is False and bfloat16.why.startswith("slower")


# --------------------------------------------------------------------------------------------
# the GPU acceptance command (tools/gpu_smoke.py): what it would run


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "tools" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_plan_writes_everything_into_one_folder(smoke, tmp_path) -> None:
    plan = dict(smoke.steps(tmp_path))
    assert list(plan) == ["gpu-tests", "benchmarks", "doctor", "run", "maxbatch"]
    assert "-m" in plan["gpu-tests"] and "gpu" in plan["gpu-tests"]
    assert f"--benchmark-json={tmp_path / 'benchmarks.json'}" in plan["benchmarks"]
    assert plan["run"][plan["run"].index("--out") + 1] == str(tmp_path / "run")
    # The mpbench steps parse as the command line means them.
    doctor = build_parser().parse_args(plan["doctor"][3:])
    assert doctor.measure and doctor.json
    run = build_parser().parse_args(plan["run"][3:])
    assert (run.profile, run.epochs, run.repeats, run.xla) == ("seed", 1, 1, ["off"])
    maxbatch = build_parser().parse_args(plan["maxbatch"][3:])
    assert (maxbatch.model, maxbatch.memory_limit, maxbatch.json) == ("resnet50", None, True)


def test_smoke_refuses_without_a_gpu(smoke, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(smoke, "has_gpu", lambda: False)
    assert smoke.main(["--out", str(tmp_path / "smoke")]) == 2
    assert "no GPU visible" in capsys.readouterr().err
    assert not (tmp_path / "smoke").exists()


def test_smoke_pytest_steps_collect(smoke, tmp_path, pytester: pytest.Pytester) -> None:
    """The two pytest steps accept their options and collect: the gpu tests, every benchmark.
    Collected in this process (the smoke script's ``python -m pytest`` argv after ``-m pytest``):
    a child would only add a TensorFlow import."""
    plan = dict(smoke.steps(tmp_path))
    collected = {}
    for name in ("gpu-tests", "benchmarks"):
        command = [a for a in plan[name] if not a.startswith(("--junitxml", "--benchmark-json"))]
        assert command[:3] == [sys.executable, "-m", "pytest"], command
        recorder = pytester.inline_run(*command[3:], "--collect-only")
        assert recorder.ret == 0, f"{name}: exit status {recorder.ret} (its error is above)"
        collected[name] = [call.item.nodeid for call in recorder.getcalls("pytest_itemcollected")]
    assert any("on_a_tensor_core_gpu" in test for test in collected["gpu-tests"])
    assert sum("test_train_step" in test for test in collected["benchmarks"]) == 15
    assert sys.executable in plan["doctor"]


# --------------------------------------------------------------------------------------------
# NVML follows TensorFlow's numbering


@pytest.mark.parametrize(
    ("visible", "index", "expected"),
    [(None, 0, 0), ("2,3", 0, 2), ("2,3", 1, 3), ("GPU-5f1c", 0, 0), ("", 1, 1)],
)
def test_nvml_index_follows_cuda_visible_devices(monkeypatch, visible, index, expected) -> None:
    from mpcore.probe import telemetry

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert telemetry.nvml_index(index) == expected


def test_nvml_queries_ask_for_the_gpu_tensorflow_uses(monkeypatch) -> None:
    from mpcore.probe import telemetry

    class FakeNvml:
        def nvmlDeviceGetHandleByIndex(self, index):
            return index

        def nvmlDeviceGetName(self, handle):
            return f"GPU at NVML index {handle}".encode()

    monkeypatch.setattr(telemetry, "nvml", FakeNvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert telemetry.device_name(0) == "GPU at NVML index 3"


def test_run_report_notes_a_simulated_gpu_and_tf32() -> None:
    from mpcore.report import run_table
    from mpcore.run.schema import SCHEMA

    record = {
        "name": "float32+xla_off",
        "status": "ok",
        "result": {
            "epoch_seconds": [5.0, 2.0],
            "first_epoch_seconds": 5.0,
            "steady_epoch_seconds": 2.0,
            "ms_per_step": 100.0,
            "images_per_second": 800.0,
            "loss": [1.5, 1.0],
            "accuracy": [0.4, 0.6],
            "val_loss": [1.6, 1.1],
            "val_accuracy": [0.3, 0.5],
            "loss_scale": None,
        },
    }
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    document = {
        "schema": SCHEMA,
        "settings": {"model": "small", "image_size": 32, "batch_size": 8, "epochs": 2},
        "configurations": [record],
        "machine": {"gpus": [h100], "gpu_simulated": True, "tf32_enabled": True},
    }
    table = run_table(document)
    assert "gpu simulated (MPBENCH_FAKE_GPU)" in table
    assert "float32: ran as TF32" in table
    document["machine"] = {"gpus": [], "gpu_simulated": False, "tf32_enabled": True}
    assert "TF32" not in run_table(document) and "simulated" not in run_table(document)
