"""The benchmarks/ suite driven with pytester on the CPU, at tiny settings.

The suite runs in-process from where it is, the plugin loaded with ``-p``; ``MPBENCH_FAKE_GPU``
stands in for a T4, an A100, a pre-Volta card or no GPU, so every skip decision is exercised here.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest
import tensorflow as tf

import mpcore.bench.stepbench
from mpcore.precision.modes import amp_rewrite_enabled, autoclustering_enabled
from mpcore.probe.peaks import FAKE_GPU_ENV
from mpcore.probe.skips import NO_GPU_REASON

pytest_plugins = ("pytester",)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: The suite's test modules, run where they are: the plugin is loaded with ``-p`` and conftest
#: files are not read (``--noconftest``), so nothing is copied.
# The suite runs in this process with the arithmetic on the CPU, whatever GPU a test simulates.
pytestmark = pytest.mark.cpu(reason="the benchmark harness run in-process on the CPU, fake GPUs")

SUITE = tuple(str(BENCHMARKS / name) for name in ("test_train_step.py", "test_input_pipeline.py"))
PLUGIN = ("-p", "mpcore.bench.plugin", "--noconftest")
TINY = (
    "--mp-model=small",
    "--mp-image-size=16",
    "--mp-batch=4",
    "--mp-steps=1",
    "--mp-rounds=1",
    "--mp-warmup-rounds=0",
    "--mp-pipeline-images=10",
)
ONLY_TRAINING = ("-k", "train_step")
#: Every field each training benchmark records.
TRAINING_FIELDS = (
    "images_per_second",
    "ms_per_step",
    "precision",
    "xla",
    "model",
    "batch",
    "image_size",
    "parameters",
    "compile_seconds",
    "final_loss_scale",
    "peak_memory_bytes",
    "tf_peak_memory_bytes",
    "nvml_peak_used_bytes",
    "peak_rss_bytes",
    "flops_per_step",
    "achieved_tflops",
    "peak_tflops",
    "fraction_of_peak",
)
MACHINE_FIELDS = (
    "gpu_name",
    "gpu_compute_capability",
    "gpu_simulated",
    "nvidia_driver",
    "cuda_build",
    "cudnn_build",
    "tensorflow",
    "keras",
    "tf32_enabled",
)


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester folder for the benchmarks/ suite, seeing no GPU unless a test says otherwise."""
    monkeypatch.setenv(FAKE_GPU_ENV, "none")
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(
        *SUITE, *PLUGIN, "-p", "no:random_order", "--import-mode=importlib", "-rs", *args
    )


def process_modes() -> tuple[str, bool, bool]:
    """The dtype policy and whether the rewrite and auto-clustering are on in this process."""
    return (
        keras.mixed_precision.dtype_policy().name,
        amp_rewrite_enabled(),
        autoclustering_enabled(),
    )


def saved_benchmarks(path: Path) -> dict[str, dict]:
    return {bench["name"]: bench for bench in json.loads(path.read_text())["benchmarks"]}


def collected_skips(pytester: pytest.Pytester, *args: str) -> dict[str, str | None]:
    """Each training benchmark's id and the skip reason it was collected with (None: runs)."""
    items, _ = pytester.inline_genitems(*SUITE, *PLUGIN, "--import-mode=importlib", *args)
    skips = {}
    for item in items:
        if "combination" in item.fixturenames:
            mark = item.get_closest_marker("skip")
            skips[item.callspec.id] = mark.kwargs["reason"] if mark else None
    return skips


def test_without_gpu_only_the_pipeline_runs(suite: pytest.Pytester) -> None:
    result = run(suite, *TINY)
    result.assert_outcomes(passed=1, skipped=15)
    result.stdout.fnmatch_lines([f"SKIPPED ?15? *test_train_step.py: {NO_GPU_REASON}"])
    result.stdout.fnmatch_lines(["*input pipeline*raw decode+resize images/s*"])


@pytest.mark.parametrize(
    ("fake_gpu", "expected"),
    [
        (
            "Tesla T4@7.5",
            {
                "mixed_bfloat16": "needs compute capability 8.0+ (Tesla T4 has 7.5)",
                "float8": "no FP8 tensor cores: float8 needs compute capability 8.9+",
            },
        ),
        # A GPU simulated on the CPU times the CPU's small model, which float8 can quantize.
        ("NVIDIA H100 80GB HBM3@9.0", {}),
        # The reasons of every other GPU and of no GPU are skip_reason()'s, tested once, in
        # tests/test_benchmarks_devices.py; here, that collection applies them.
    ],
)
def test_skips_are_decided_at_collection_from_capabilities(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fake_gpu: str, expected: dict
) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, fake_gpu)
    skips = collected_skips(suite)
    assert len(skips) == 15
    for combination, reason in skips.items():
        precision = combination.split("-")[0]
        if precision in expected:
            assert expected[precision] in reason
        else:
            assert reason is None, combination


def test_allow_cpu_runs_exactly_the_cpu_possible_combinations(suite: pytest.Pytester) -> None:
    skips = collected_skips(suite, "--mp-allow-cpu")
    runnable = {combination for combination, reason in skips.items() if reason is None}
    assert runnable == {
        f"{p}-{x}-fit"
        for p in ("float32", "mixed_float16", "mixed_bfloat16", "float8")
        for x in ("off", "jit")
    }
    assert skips["amp_rewrite-off-fit"] == "grappler auto_mixed_precision is a no-op without a GPU"
    assert "auto-clustering does not cluster CPU ops" in skips["float32-auto-fit"]


@pytest.mark.slow
def test_cpu_run_records_every_field_prints_the_table_and_compares(
    suite: pytest.Pytester,
) -> None:
    storage = f"file://{suite.path / 'storage'}"
    out = suite.path / "out.json"
    first = run(
        suite,
        *TINY,
        "--mp-allow-cpu",
        "--mp-xla=off",
        f"--benchmark-json={out}",
        "--benchmark-autosave",
        f"--benchmark-storage={storage}",
    )
    first.assert_outcomes(passed=5, skipped=1)  # amp_rewrite-off is not CPU-possible

    document = json.loads(out.read_text())
    assert set(MACHINE_FIELDS) <= set(document["machine_info"])
    assert document["machine_info"]["tensorflow"] == tf.__version__
    benches = saved_benchmarks(out)
    for precision in ("float32", "mixed_float16", "mixed_bfloat16", "float8"):
        info = benches[f"test_train_step[{precision}-off-fit]"]["extra_info"]
        assert info["step"] == "fit"  # the default: what model.fit runs
        assert set(TRAINING_FIELDS) <= set(info), precision
        for field in ("images_per_second", "ms_per_step", "compile_seconds", "achieved_tflops"):
            assert info[field] > 0, field
        assert info["parameters"] > 0 and info["flops_per_step"] > 0
        assert info["peak_memory_bytes"] == info["peak_rss_bytes"] > 0  # the CPU's measure
        assert (info["final_loss_scale"] is not None) == (precision == "mixed_float16")
        assert info["fraction_of_peak"] is None  # no datasheet peak for a CPU
    pipeline = benches["test_input_pipeline"]["extra_info"]
    assert pipeline["images_per_second"] > 0 and pipeline["baseline_images_per_second"] > 0

    first.stdout.fnmatch_lines(
        [
            "*mpbench report*",
            "small 16px batch 4 on CPU, fit step",
            "precision*xla*step*ms/step*images/s*speedup*peak memory MiB*TFLOP/s*% of peak*",
            "float32*off*fit*1.00x*",
            "mixed_float16*off*x*",
            "mixed_bfloat16*off*x*",
            "float8*off*x*",
        ]
    )

    second = run(
        suite,
        *TINY,
        *ONLY_TRAINING,
        "--mp-allow-cpu",
        "--mp-xla=off",
        "--mp-precision=float32",
        "--benchmark-compare",
        f"--benchmark-storage={storage}",
    )
    second.assert_outcomes(passed=1)
    # One row per source; pytest-benchmark sorts them by time, so match each on its own.
    second.stderr.fnmatch_lines(["*Comparing against benchmarks from*0001_*"])
    second.stdout.fnmatch_lines(["*test_train_step?float32-off-fit? (NOW)*"])
    second.stdout.fnmatch_lines(["*test_train_step?float32-off-fit? (0001*"])


@pytest.mark.slow
def test_both_steps_run_in_one_session_each_in_its_own_table(suite: pytest.Pytester) -> None:
    out = suite.path / "out.json"
    result = run(
        suite,
        *TINY,
        *ONLY_TRAINING,
        "--mp-allow-cpu",
        "--mp-xla=off",
        "--mp-precision=float32,mixed_float16",
        "--mp-step=fit,custom",
        "--mp-steps=2",
        "--mp-steps-per-execution=2",
        f"--benchmark-json={out}",
    )
    result.assert_outcomes(passed=4)
    benches = saved_benchmarks(out)
    for precision in ("float32", "mixed_float16"):
        for step in ("fit", "custom"):
            bench = benches[f"test_train_step[{precision}-off-{step}]"]
            assert bench["extra_info"]["step"] == step
            assert bench["extra_info"]["steps_per_execution"] == (2 if step == "fit" else 1)
            assert bench["group"].endswith(
                f"{step} step" + (" (2 steps per execution)" * (step == "fit"))
            )
    result.stdout.fnmatch_lines(
        [
            "small 16px batch 4 on CPU, custom step",
            "precision*xla*step*ms/step*",
            "*",
            "float32*off*custom*1.00x*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "small 16px batch 4 on CPU, fit step (2 steps per execution)",
            "*",
            "*",
            "float32*off*fit*1.00x*",
        ]
    )


@pytest.mark.slow
def test_combinations_do_not_leak_rewrite_or_autoclustering(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, "Tesla T4@7.5")  # so the rewrite and auto-clustering run
    before = process_modes()
    out = suite.path / "out.json"
    # Both globals on, then a combination that needs both off, in this order.
    result = run(
        suite,
        *TINY,
        "--mp-precision=amp_rewrite,float32",
        "--mp-xla=auto,off",
        "-k",
        "amp_rewrite-auto or float32-off",
        "-v",
        f"--benchmark-json={out}",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_train_step?amp_rewrite-auto-fit? PASSED*",
            "*test_train_step?float32-off-fit? PASSED*",
        ]
    )
    document = json.loads(out.read_text())
    assert document["machine_info"]["gpu_simulated"] is True
    for bench in document["benchmarks"]:
        info = bench["extra_info"]
        assert info["amp_rewrite_enabled"] == (info["precision"] == "amp_rewrite"), bench["name"]
        assert info["autoclustering_enabled"] == (info["xla"] == "auto"), bench["name"]
        assert info["peak_tflops"] == (8.1 if info["precision"] == "float32" else 65.0)
    assert process_modes() == before


@pytest.mark.slow
def test_a_failing_combination_does_not_stop_the_others(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = mpcore.bench.stepbench.build_compiled

    def out_of_memory_for_float16(config, settings, strategy=None):
        if config.precision == "mixed_float16":
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_build(config, settings, strategy)

    monkeypatch.setattr(mpcore.bench.stepbench, "build_compiled", out_of_memory_for_float16)
    out = suite.path / "out.json"
    result = run(
        suite,
        *TINY,
        *ONLY_TRAINING,
        "--mp-allow-cpu",
        "--mp-precision=mixed_float16,float32,mixed_bfloat16",
        "--mp-xla=off",
        f"--benchmark-json={out}",
    )
    result.assert_outcomes(passed=2, errors=1)
    assert set(saved_benchmarks(out)) == {
        "test_train_step[float32-off-fit]",
        "test_train_step[mixed_bfloat16-off-fit]",
    }
    result.stdout.fnmatch_lines(
        ["*mixed_float16*off*ResourceExhaustedError: OOM when allocating tensor*"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mp-precision=float64",), "ERROR: unknown --mp-precision value 'float64'*"),
        (("--mp-model=vgg",), "ERROR: --mp-model: unknown model 'vgg'*"),
        (("--mp-batch=0",), "ERROR: --mp-batch must be at least 1, got 0"),
        (("--mp-image-size=4", "--mp-model=small"), "ERROR: --mp-image-size 4 is too small*"),
        (("--mp-step=keras",), "ERROR: unknown --mp-step value 'keras'; valid: fit, custom, all"),
        (
            ("--mp-steps=5", "--mp-steps-per-execution=2"),
            "ERROR: --mp-steps-per-execution 2 does not divide --mp-steps 5",
        ),
    ],
)
def test_bad_options_fail_in_one_line(
    suite: pytest.Pytester, args: tuple[str, ...], message: str
) -> None:
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_bad_fake_gpu_fails_in_one_line(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, "T4")
    result = run(suite)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: {FAKE_GPU_ENV}='T4' is not 'none' or 'NAME@MAJOR.MINOR'*"]
    )


@pytest.mark.parametrize(
    ("numprocesses", "worker", "args", "controller_only"),
    [
        (2, False, ["-n", "2"], True),  # the README's command: the controller imports nothing
        (2, False, ["-n", "2", "--mp-allow-cpu"], False),  # tox -m ci: checked once, here
        (2, False, ["-n", "2", "--mp-model=vgg"], False),
        (0, False, ["-n", "0"], False),  # no workers: this process runs the benchmarks
        (None, False, [], False),  # no xdist
        (2, True, ["-n", "2"], False),  # a worker resolves its own
    ],
)
def test_only_an_xdist_controller_without_mp_options_leaves_them_unresolved(
    numprocesses: int | None, worker: bool, args: list[str], controller_only: bool
) -> None:
    from types import SimpleNamespace

    from mpcore.bench.plugin import _controller_only

    config = SimpleNamespace(
        option=SimpleNamespace(numprocesses=numprocesses),
        invocation_params=SimpleNamespace(args=tuple(args)),
        **({"workerinput": {}} if worker else {}),
    )
    assert _controller_only(config) is controller_only
