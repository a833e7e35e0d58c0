"""pytest-benchmark plugin for mpbench: ``--mp-*`` options, capability skips, report tables.

Every precision x XLA combination becomes one parametrized benchmark; combinations this machine
cannot serve are skipped at collection time with the reason (see
:func:`mpcore.probe.skips.skip_reason`). Without a GPU every training benchmark is skipped, unless
``--mp-allow-cpu`` runs the CPU-possible ones on the small model at a tiny size.

Capability data is detected from TensorFlow. Tests replace it with the environment variable
``MPBENCH_FAKE_GPU`` (``none`` or ``NAME@MAJOR.MINOR``, e.g. ``Tesla T4@7.5``): skips and the
peak table then follow the simulated GPU while the work itself runs wherever TensorFlow places
it, and ``machine_info["gpu_simulated"]`` says so. It exists for the tests, not for measuring.

``--mp-step`` chooses the step timed: ``fit`` (default), Keras's compiled train function (what
``model.fit`` runs per step), and/or ``custom``, mpcore's own ``tf.function`` step; each is
its own benchmark (id ``PRECISION-XLA-STEP``) and its own report table.

``--mp-strategy mirrored`` times each step under ``MirroredStrategy`` (``--mp-batch`` per
replica); it needs two replicas: two GPUs, or ``--mp-cpu-replicas 2`` to split the CPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from mpcore.bench.table import render_report
from mpcore.names import PRECISIONS, STEP_KINDS, XLA_MODES
from mpcore.probe import backend, telemetry
from mpcore.probe.capability import capability
from mpcore.probe.machine import GpuInfo, software_versions, visible_gpus
from mpcore.probe.skips import skip_reason
from mpcore.train.placement import cpu_replicas_problem

# Modules that import Keras are imported where used: see _controller_only.
if TYPE_CHECKING:
    from mpcore.bench.stepbench import PreparedStep
    from mpcore.precision.modes import RunConfig
    from mpcore.train.settings import TrainSettings

GPU_DEFAULTS = {"model": "resnet50", "batch": 80, "image_size": None, "steps": 10, "rounds": 10}
CPU_DEFAULTS = {"model": "small", "batch": 8, "image_size": 32, "steps": 5, "rounds": 5}

_OPTIONS = pytest.StashKey["BenchOptions"]()
_ROWS = pytest.StashKey[list]()


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """The resolved ``--mp-*`` options and the capability data skips are decided from."""

    model: str
    batch: int
    image_size: int | None  # None: a user's model whose input is not an image
    classes: int
    precisions: tuple[str, ...]
    xla_modes: tuple[str, ...]
    steps: int
    rounds: int
    warmup_rounds: int
    allow_cpu: bool
    pipeline_images: int
    gpu: GpuInfo | None
    gpu_count: int
    gpu_simulated: bool
    real_gpu: bool
    strategy: str = "none"
    replicas: int = 1
    step_kinds: tuple[str, ...] = ("fit",)
    steps_per_execution: int = 1
    #: ``session``: the in-session probe; ``fresh``: on a CPU, each row's memory in its own process.
    memory: str = "session"
    #: Whether the model has a Dense/EinsumDense layer besides its head (float8 quantizes those)
    float8_layers: bool = True

    @property
    def device(self) -> str:
        return "/GPU:0" if self.real_gpu else "/CPU:0"

    @property
    def device_name(self) -> str | None:
        return self.gpu.name if self.gpu else None

    @property
    def group(self) -> str:
        """One model/batch/size on one device: the rows of one report table."""
        where = self.device_name or "CPU"
        size = f" {self.image_size}px" if self.image_size else ""
        group = f"{self.model}{size} batch {self.batch} on {where}"
        return group if self.strategy == "none" else f"{group}, {self.strategy} x{self.replicas}"

    def group_of(self, step_kind: str) -> str:
        """:attr:`group` of one step kind: speedups compare rows of the same step only."""
        many = step_kind == "fit" and self.steps_per_execution > 1
        spe = f" ({self.steps_per_execution} steps per execution)" if many else ""
        return f"{self.group}, {step_kind} step{spe}"

    @property
    def train_settings(self) -> TrainSettings:
        from mpcore.train.settings import TrainSettings

        return TrainSettings(model=self.model, image_size=self.image_size, batch_size=self.batch)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mpbench", "mpbench training-step benchmarks")
    group.addoption(
        "--mp-model",
        help="model to time: resnet50 (GPU default) or small (CPU), or your own: a .keras file "
        "or package.module:factory (input shape and classes taken from the model)",
    )
    group.addoption("--mp-batch", type=int, help="batch size (GPU default 80, CPU 8)")
    group.addoption("--mp-image-size", type=int, help="image side (GPU default: model's, CPU 32)")
    group.addoption("--mp-classes", type=int, default=5, help="number of classes (default 5)")
    group.addoption(
        "--mp-precision",
        default=",".join(PRECISIONS),
        help=f"comma-separated precisions (default all: {','.join(PRECISIONS)})",
    )
    group.addoption(
        "--mp-xla",
        default=",".join(XLA_MODES),
        help=f"comma-separated XLA modes (default all: {','.join(XLA_MODES)})",
    )
    group.addoption(
        "--mp-step",
        default="fit",
        help="comma-separated steps to time: fit (default; Keras's compiled train function, what "
        "model.fit runs per step) and/or custom (mpcore's own tf.function step)",
    )
    group.addoption(
        "--mp-steps-per-execution",
        type=int,
        help="steps per call of the fit step (Keras's steps_per_execution; default 1); must "
        "divide --mp-steps",
    )
    group.addoption("--mp-steps", type=int, help="training steps per timed round (GPU 10, CPU 5)")
    group.addoption("--mp-rounds", type=int, help="timed rounds (GPU default 10, CPU 5)")
    group.addoption(
        "--mp-warmup-rounds", type=int, default=2, help="untimed rounds after the first step"
    )
    group.addoption(
        "--mp-allow-cpu",
        action="store_true",
        help="run the CPU-possible combinations when no GPU is visible (small model, tiny size)",
    )
    group.addoption(
        "--mp-pipeline-images",
        type=int,
        default=200,
        help="generated JPEGs the input-pipeline benchmark reads per round (default 200)",
    )
    group.addoption(
        "--mp-strategy",
        default="none",
        choices=("none", "mirrored"),
        help="none (default), or mirrored: MirroredStrategy over the GPUs (--mp-cpu-replicas "
        "logical CPUs without one), --mp-batch per replica; skipped with fewer than 2 replicas",
    )
    group.addoption(
        "--mp-memory",
        default="session",
        choices=("session", "fresh"),
        help="session (default): the peak memory seen in this pytest process (on a CPU its peak "
        "RSS so far, which only grows down the rows); fresh: on a CPU, also measure each row's "
        "peak RSS in a process of its own (comparable between rows, one process per row)",
    )
    group.addoption(
        "--mp-cpu-replicas",
        type=int,
        help="split the CPU into N logical devices for --mp-strategy mirrored (no GPU only)",
    )


def _positive(option: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise pytest.UsageError(f"{option} must be at least {minimum}, got {value}")
    return value


def _replicas(config: pytest.Config, strategy: str, gpu_count: int) -> int:
    """The replicas ``--mp-strategy`` trains on, after ``--mp-cpu-replicas`` split the CPU."""
    if strategy != "none" and not backend.is_tensorflow():
        raise pytest.UsageError(
            f"--mp-strategy {strategy} is TensorFlow-only (tf.distribute); the backend is "
            f"{backend.name()}"
        )
    if strategy == "none" and config.getoption("mp_cpu_replicas") is None:
        return 1
    # tf.distribute: imported here so the JAX/torch path needs no TensorFlow.
    from mpcore.train.replicas import configure_logical_cpus, mirrored_devices

    cpu_replicas = config.getoption("mp_cpu_replicas")
    if cpu_replicas is not None:
        _positive("--mp-cpu-replicas", cpu_replicas)
        problem = cpu_replicas_problem(cpu_replicas, strategy, gpu_count)
        if problem:
            raise pytest.UsageError(f"--mp-cpu-replicas {problem}")
        try:
            configure_logical_cpus(cpu_replicas)
        except RuntimeError as error:
            raise pytest.UsageError(f"--mp-cpu-replicas: {error}") from None
    return len(mirrored_devices()) if strategy == "mirrored" else 1


def resolve_options(config: pytest.Config) -> BenchOptions:
    """Validate the ``--mp-*`` options and fill the defaults for the device they will run on."""
    from mpcore.bench.benchmodel import names as _names
    from mpcore.bench.benchmodel import registry_size, user_model
    from mpcore.models.registry import model_spec
    from mpcore.user.ownmodel import is_user_model

    try:
        decided = capability()
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    gpus, simulated, gpu = decided.gpus, decided.simulated, decided.gpu
    allow_cpu = config.getoption("mp_allow_cpu")
    # The sizes follow where the arithmetic runs: a GPU simulated on the CPU gets the CPU's.
    on_cpu = (gpu is None and allow_cpu) or (gpu is not None and not decided.real_gpus)
    defaults = CPU_DEFAULTS if on_cpu else GPU_DEFAULTS
    model = config.getoption("mp_model") or defaults["model"]
    if is_user_model(model):
        image_size, classes, float8_layers = user_model(config, model, defaults["image_size"])
    else:
        image_size, classes = registry_size(config, model, defaults), None
        float8_layers = model_spec(model).float8_layers
    strategy = config.getoption("mp_strategy")
    if classes is not None and strategy != "none":
        raise pytest.UsageError(f"--mp-model {model}: a user's model is timed without a strategy")

    def number(option: str, fallback: int, minimum: int = 1) -> int:
        value = config.getoption(option.lstrip("-").replace("-", "_"))
        return _positive(option, fallback if value is None else value, minimum)

    steps = number("--mp-steps", defaults["steps"])
    steps_per_execution = number("--mp-steps-per-execution", 1)
    if steps % steps_per_execution:
        raise pytest.UsageError(
            f"--mp-steps-per-execution {steps_per_execution} does not divide --mp-steps {steps}"
        )
    return BenchOptions(
        model=model,
        batch=number("--mp-batch", defaults["batch"]),
        image_size=image_size,
        classes=classes or number("--mp-classes", 5, minimum=2),
        precisions=_names(config.getoption("mp_precision"), PRECISIONS, "--mp-precision"),
        xla_modes=_names(config.getoption("mp_xla"), XLA_MODES, "--mp-xla"),
        steps=steps,
        rounds=number("--mp-rounds", defaults["rounds"]),
        warmup_rounds=number("--mp-warmup-rounds", 2, minimum=0),
        allow_cpu=allow_cpu,
        pipeline_images=number("--mp-pipeline-images", 200, minimum=10),
        gpu=gpu,
        gpu_count=len(gpus),
        gpu_simulated=simulated,
        real_gpu=bool(visible_gpus()),
        strategy=strategy,
        replicas=_replicas(config, strategy, len(visible_gpus())),
        step_kinds=_names(config.getoption("mp_step"), STEP_KINDS, "--mp-step"),
        steps_per_execution=steps_per_execution,
        memory=config.getoption("mp_memory"),
        float8_layers=float8_layers,
    )


def _user_model_shape(
    config: pytest.Config, model: str, default_size: int | None
) -> tuple[int | None, int]:
    """A user's model's image side and output width (see
    :func:`mpcore.bench.benchmodel.user_model`)."""
    from mpcore.bench.benchmodel import user_model

    return user_model(config, model, default_size)[:2]


def _controller_only(config: pytest.Config) -> bool:
    """pytest-xdist's controller, no ``--mp-*`` on its command line: it runs no benchmark, and
    resolving the options (importing TensorFlow: 4-5 s) would delay every worker's start. Options
    given there are checked here (one line for a bad one); PYTEST_ADDOPTS's, by each worker."""
    return (
        bool(getattr(config.option, "numprocesses", None))
        and not hasattr(config, "workerinput")
        and not any(str(arg).startswith("--mp-") for arg in config.invocation_params.args)
    )


def options_of(config: pytest.Config) -> BenchOptions:
    """The session's ``--mp-*`` options, resolved at the first use."""
    if _OPTIONS not in config.stash:
        config.stash[_OPTIONS] = resolve_options(config)
    return config.stash[_OPTIONS]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a GPU visible to TensorFlow")
    config.stash[_ROWS] = []
    if not _controller_only(config):
        options_of(config)  # a bad option stops the session before collection


@pytest.fixture(scope="session")
def bench_options(pytestconfig: pytest.Config) -> BenchOptions:
    """The resolved ``--mp-*`` options of this session."""
    return options_of(pytestconfig)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``combination`` over precision x XLA; unservable ones carry a skip mark."""
    if "combination" not in metafunc.fixturenames:
        return
    from mpcore.precision.modes import RunConfig

    options = options_of(metafunc.config)
    params = []
    for precision in options.precisions:
        for xla in options.xla_modes:
            reason = backend.unsupported_reason(precision, xla) or skip_reason(
                precision, xla, options.gpu, options.allow_cpu
            )
            if not reason and precision == "float8" and not options.float8_layers:
                reason = f"{options.model} has no Dense or EinsumDense layer for float8 to quantize"
            if not reason and options.strategy == "mirrored" and options.replicas < 2:
                split = "" if options.real_gpu else " (--mp-cpu-replicas 2 splits the CPU)"
                reason = (
                    "--mp-strategy mirrored needs 2 or more replicas; TensorFlow sees "
                    f"{options.replicas} device to mirror over{split}"
                )
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(
                pytest.param(RunConfig(precision, xla), id=f"{precision}-{xla}", marks=marks)
            )
    metafunc.parametrize("combination", params)
    if "step_kind" in metafunc.fixturenames:
        # The custom step is a tf.function: TensorFlow only (JAX and torch time fit's).
        tf_only = "custom step: TensorFlow-only (the Keras backend is not tensorflow)"
        metafunc.parametrize(
            "step_kind",
            [
                pytest.param(
                    kind,
                    marks=[pytest.mark.skip(reason=tf_only)]
                    if kind == "custom" and not backend.is_tensorflow()
                    else [],
                )
                for kind in options.step_kinds
            ],
        )


@pytest.fixture
def speedup_caveat(bench_options: BenchOptions, combination: RunConfig) -> str | None:
    """A note for results that run but should not be read as a speedup (e.g. no tensor cores)."""
    return capability().speedup_note(combination.precision)


@pytest.fixture
def prepared(
    bench_options: BenchOptions, combination: RunConfig, step_kind: str
) -> Iterator[PreparedStep]:
    """The combination built in isolation, compiled, verified and run once; globals restored."""
    if not backend.is_tensorflow():  # JAX, torch: Keras's own compiled train function
        from mpcore.bench.backendstep import prepared_keras_step

        with prepared_keras_step(
            combination, bench_options.train_settings, bench_options.steps, bench_options.classes
        ) as step:
            yield step
        return
    from mpcore.bench.stepbench import prepared_step
    from mpcore.train.replicas import make_strategy

    with prepared_step(
        combination,
        bench_options.train_settings,
        bench_options.steps,
        bench_options.classes,
        bench_options.device,
        make_strategy(bench_options.strategy),  # one per process: made once, then reused
        bench_options.strategy,
        step_kind,
        bench_options.steps_per_execution,
    ) as step:
        yield step


def _first_line(excinfo: pytest.ExceptionInfo) -> str:
    lines = str(excinfo.value).strip().splitlines()
    return f"{excinfo.typename}: {lines[0]}" if lines else excinfo.typename


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Keep each benchmark's ``extra_info``, or its error (setup or call), for the report."""
    from mpcore.precision.modes import RunConfig

    report = yield
    funcargs = getattr(item, "funcargs", {})
    callspec = getattr(item, "callspec", None)
    combination = callspec.params.get("combination") if callspec else None
    row: dict = {}
    if isinstance(combination, RunConfig):
        options = options_of(item.config)
        step_kind = callspec.params.get("step_kind", "fit")
        row = {"group": options.group_of(step_kind), "step": step_kind, **combination.to_dict()}
    if "benchmark" in funcargs:
        row.update(funcargs["benchmark"].extra_info)
    failed_here = report.failed and call.excinfo is not None and call.when in ("setup", "call")
    if failed_here and isinstance(combination, RunConfig):
        row["error"] = _first_line(call.excinfo)
    if row and (failed_here or (call.when == "call" and report.passed)):
        item.config.stash[_ROWS].append(row)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash.get(_ROWS, [])
    if not rows:
        return
    terminalreporter.write_sep("=", "mpbench report")
    terminalreporter.write_line(render_report(rows))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """GPU, driver, CUDA/cuDNN build, the Keras backend and its version, TensorFlow/Keras
    versions and TF32 state."""
    options = options_of(config)
    versions = software_versions()
    gpu = options.gpu.to_dict() if options.gpu else {"name": None, "compute_capability": None}
    machine_info.update(
        {
            "gpu_name": gpu["name"],
            "gpu_compute_capability": gpu["compute_capability"],
            "gpu_count": options.gpu_count,
            "gpu_simulated": options.gpu_simulated,
            "nvidia_driver": telemetry.driver_version(),
            "cuda_build": versions["cuda_build"],
            "cudnn_build": versions["cudnn_build"],
            "backend": versions["backend"],
            "backend_version": versions["backend_version"],
            "tensorflow": versions["tensorflow"],
            "keras": versions["keras"],
            "tf32_enabled": backend.tf32_enabled(),
        }
    )
