"""Run configurations one per subprocess and keep ``results.json`` complete after each one.

Mixed precision, XLA and GPU memory are process-global in TensorFlow, so every configuration
trains in a fresh ``python -m mpcore.runner SPEC`` worker: nothing leaks from one configuration
into the next, and a worker that runs out of memory, meets a NaN loss or crashes outright is
recorded as failed with its reason while the others go on. The parent writes ``results.json``
atomically (temporary file, then rename) after every configuration, so an interrupted or killed
run always leaves the last complete state on disk.

Fault injection for tests of the harness itself: ``MPBENCH_FAULT="NAME=KIND[,NAME=KIND]"`` makes
the worker of configuration NAME fail just before training, with KIND ``error`` (an exception),
``oom`` (TensorFlow's ``ResourceExhaustedError``) or ``crash`` (the worker kills itself), or
during training with ``nan`` (every weight set to NaN before step 2, so the loss really is NaN).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

SCHEMA = "mpbench-results/1"
RESULTS_FILE = "results.json"
FAULT_ENV = "MPBENCH_FAULT"
FAULT_KINDS: tuple[str, ...] = ("error", "oom", "crash", "nan")
#: Exit status of a worker (and of ``mpbench run``) stopped by Ctrl-C, as a shell reports SIGINT.
EXIT_INTERRUPTED = 130
#: Seconds a worker gets to stop after the parent forwards SIGINT, before it is killed.
STOP_GRACE_SECONDS = 20.0


class RunSetupError(Exception):
    """The run cannot start as asked (bad ``--out``, unresumable folder); one line for the user."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` so that readers see the old or the new file, never
    a partial one: write a temporary file in the same folder, fsync it, then rename over."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(document, handle, indent=2, allow_nan=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_results(path: Path) -> dict[str, Any]:
    """Load a ``results.json``; raise :class:`RunSetupError` if it is not one."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise RunSetupError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise RunSetupError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise RunSetupError(f"{path} is not an mpbench results file (schema {SCHEMA})")
    return document


def check_writable_folder(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".mpbench-write-test"):
            pass
    except OSError as error:
        raise RunSetupError(
            f"--out {out} is not a writable folder: {error.strerror or error}"
        ) from None


@dataclasses.dataclass
class RunPlan:
    """What ``mpbench run`` will do: where, on which data, settings and configurations."""

    out: Path
    data_root: Path
    settings: dict[str, Any]  # mpcore.training.TrainSettings.to_dict()
    # mpcore.modes.RunConfig.to_dict(), in run order, plus "strategy" when not "none"
    configs: list[dict[str, str]]
    validation_fraction: float = 0.2
    verbose: int = 2
    #: Undecodable images left out (``--skip-bad-images``): every worker drops them too.
    skipped_images: list[str] = dataclasses.field(default_factory=list)
    #: Logical CPU devices a ``mirrored`` worker splits the CPU into (0: leave it whole).
    cpu_replicas: int = 0
    #: Local worker processes a ``multiworker`` configuration runs on (0: one per host,
    #: clustered by the TF_CONFIG of each host).
    workers: int = 0
    #: Seconds a local multi-worker configuration may take before every worker is stopped.
    worker_timeout: float = 6 * 3600.0

    @staticmethod
    def config_name(config: dict[str, str]) -> str:
        # Same label as mpcore.modes.RunConfig.name, without importing TensorFlow here; a
        # distributed configuration also names its strategy (its baseline runs without one).
        strategy = strategy_of(config)
        suffix = "" if strategy == "none" else f"@{strategy}"
        return f"{config['precision']}+xla_{config['xla']}{suffix}"

    @property
    def names(self) -> list[str]:
        return [self.config_name(config) for config in self.configs]


def strategy_of(config: dict[str, str]) -> str:
    """The tf.distribute strategy a planned configuration trains under."""
    return config.get("strategy", "none")


def mode_of(config: dict[str, str]) -> dict[str, str]:
    """The ``RunConfig`` fields of a planned configuration (without its strategy)."""
    return {"precision": config["precision"], "xla": config["xla"]}


def new_document(
    plan: RunPlan,
    *,
    profile: str,
    profile_reason: str,
    data: dict[str, Any],
    machine: dict[str, Any],
    command: list[str],
) -> dict[str, Any]:
    """The initial ``results.json`` content, before any configuration has run."""
    return {
        "schema": SCHEMA,
        "status": "running",
        "created": now_iso(),
        "updated": now_iso(),
        "command": command,
        "profile": profile,
        "profile_reason": profile_reason,
        "settings": plan.settings,
        "validation_fraction": plan.validation_fraction,
        "data": data,
        "planned": plan.names,
        "machine": machine,
        "configurations": [],
    }


def resumable_document(path: Path, plan: RunPlan) -> dict[str, Any]:
    """The saved run at ``path``, keeping only configurations that finished ``ok`` and are still
    planned; raise :class:`RunSetupError` if it was made with other settings or data."""
    document = read_results(path)
    differing = sorted(
        key
        for key in set(plan.settings) | set(document.get("settings", {}))
        if plan.settings.get(key) != document.get("settings", {}).get(key)
    )
    saved_data = document.get("data", {})
    saved_skipped = [image.get("path") for image in saved_data.get("skipped_images", [])]
    if saved_data.get("root") != str(plan.data_root) or saved_skipped != plan.skipped_images:
        differing.append("data")
    if differing:
        raise RunSetupError(
            f"cannot resume {path}: it was run with different {', '.join(differing)}; "
            "use the same options or a new --out folder"
        )
    document["configurations"] = [
        record
        for record in document.get("configurations", [])
        if record.get("status") == "ok" and record.get("name") in plan.names
    ]
    document["planned"] = plan.names
    document["status"] = "running"
    return document


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _failed_record(name: str, config: dict[str, str], reason: str) -> dict[str, Any]:
    return {
        "name": name,
        "config": config,
        "status": "failed",
        "reason": reason,
        "result": None,
        "telemetry": None,
    }


def _stop_worker(process: subprocess.Popen) -> None:
    """Ask a worker to stop like Ctrl-C would, then kill it if it does not."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_configuration(plan: RunPlan, config: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Train ``config`` in a worker subprocess and return its record (``ok`` or ``failed``).

    Raises ``KeyboardInterrupt`` (after stopping the worker) when the run is interrupted.
    """
    name = plan.config_name(config)
    if strategy_of(config) == "multiworker" and plan.workers:
        return _run_local_cluster(plan, config)
    spec_path = workdir / f"{name}.spec.json"
    result_path = workdir / f"{name}.result.json"
    log_path = plan.out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    spec = {
        "config": config,
        "settings": plan.settings,
        "data_root": str(plan.data_root),
        "validation_fraction": plan.validation_fraction,
        "skipped_images": plan.skipped_images,
        "tensorboard_dir": str(plan.out / "tensorboard" / name),
        "result_path": str(result_path),
        "verbose": plan.verbose,
        "parent_pid": os.getpid(),
        "strategy": strategy_of(config),
        "cpu_replicas": plan.cpu_replicas if strategy_of(config) == "mirrored" else 0,
    }
    write_json_atomic(spec_path, spec)
    # A rerun (--resume after a failure) must not add a second set of events to TensorBoard.
    shutil.rmtree(spec["tensorboard_dir"], ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    with open(log_path, "w") as log:
        # The worker's stdout is ours (the progress bars); its stderr (TensorFlow's native
        # logging, tracebacks) goes to the log file named in any failure reason.
        process = subprocess.Popen(
            [sys.executable, "-m", "mpcore.runner", str(spec_path)], stderr=log, env=env
        )
        try:
            code = process.wait()
        except KeyboardInterrupt:
            _stop_worker(process)
            raise
    wall_seconds = time.perf_counter() - started
    log_name = str(log_path.relative_to(plan.out))
    if result_path.is_file():
        record = json.loads(result_path.read_text())
    elif code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    elif code < 0:
        record = _failed_record(
            name, config, f"worker killed by {_signal_name(code)} (see {log_name})"
        )
    else:
        record = _failed_record(name, config, f"worker exited with status {code} (see {log_name})")
    record.update(wall_seconds=wall_seconds, log=log_name, exit_code=code)
    return record


def _run_local_cluster(plan: RunPlan, config: dict[str, str]) -> dict[str, Any]:
    """Train ``config`` on ``plan.workers`` local worker processes (``multiworker``) and return
    the chief's record; a failed launch is a failed record (every worker already stopped)."""
    from mpcore.distribute import WorkerLaunchError, run_local_multiworker

    name = plan.config_name(config)
    workdir = plan.out / "logs" / name  # worker-N.log and worker-N.json of each worker
    tensorboard_dir = plan.out / "tensorboard" / name
    shutil.rmtree(tensorboard_dir, ignore_errors=True)
    spec = {
        "config": mode_of(config),
        "settings": plan.settings,
        "data_root": str(plan.data_root),
        "validation_fraction": plan.validation_fraction,
        "verbose": plan.verbose,
        "tensorboard_dir": str(tensorboard_dir),
    }
    started = time.perf_counter()
    try:
        outcome = run_local_multiworker(
            spec, plan.workers, plan.worker_timeout, workdir, echo_chief=True
        )
        record = {**outcome.result, "name": name, "config": config}
        code = 0
    except WorkerLaunchError as error:
        record = _failed_record(name, config, str(error))
        code = 1
    record.update(
        wall_seconds=time.perf_counter() - started,
        log=str((workdir / "worker-0.log").relative_to(plan.out)),
        exit_code=code,
    )
    return record


def add_scaling(document: dict[str, Any]) -> None:
    """Give every finished distributed configuration a ``scaling`` entry: replicas, global
    batch, images/s per replica and the efficiency against the same mode without a strategy
    (one replica) in this run; efficiency is None while that baseline is missing or failed."""
    from mpcore.distribute import images_per_second_per_replica, scaling_efficiency

    records = document["configurations"]
    single = {
        RunPlan.config_name(mode_of(r["config"])): r["result"]
        for r in records
        if r.get("status") == "ok" and strategy_of(r["config"]) == "none"
    }
    for record in records:
        if record.get("status") != "ok" or strategy_of(record["config"]) == "none":
            continue
        result = record["result"]
        baseline_name = RunPlan.config_name(mode_of(record["config"]))
        baseline = single.get(baseline_name)
        per_replica = images_per_second_per_replica(result)
        record["scaling"] = {
            "strategy": strategy_of(record["config"]),
            "replicas": result["replicas"],
            "global_batch": result["global_batch"],
            "images_per_second_per_replica": per_replica,
            "baseline": baseline_name,
            "baseline_images_per_second": baseline["images_per_second"] if baseline else None,
            "scaling_efficiency": scaling_efficiency(
                result["images_per_second"], result["replicas"], baseline["images_per_second"]
            )
            if baseline
            else None,
        }


def _store(document: dict[str, Any], record: dict[str, Any]) -> None:
    kept = [r for r in document["configurations"] if r.get("name") != record["name"]]
    document["configurations"] = [*kept, record]
    if any(strategy_of(r["config"]) != "none" for r in document["configurations"]):
        add_scaling(document)


def run_all(
    plan: RunPlan,
    document: dict[str, Any],
    announce: Callable[[str], None] = print,
) -> bool:
    """Run every planned configuration not already ``ok`` in ``document``, saving
    ``results.json`` after each. Returns False if the run was interrupted (Ctrl-C)."""
    results_path = plan.out / RESULTS_FILE
    done = {r["name"] for r in document["configurations"] if r.get("status") == "ok"}
    pending = [config for config in plan.configs if plan.config_name(config) not in done]
    if done:
        announce(f"resuming: {len(done)} configuration(s) already finished: {', '.join(done)}")
    write_json_atomic(results_path, document)
    total = len(plan.configs)
    running = ""  # the configuration an interrupt would cut short
    try:
        with tempfile.TemporaryDirectory(prefix="mpbench-") as workdir:
            for position, config in enumerate(pending):
                name = running = plan.config_name(config)
                number = total - len(pending) + position + 1
                announce(f"[{number}/{total}] {name}: training")
                record = run_configuration(plan, config, Path(workdir))
                _store(document, record)
                running = ""
                document["updated"] = now_iso()
                write_json_atomic(results_path, document)
                following = pending[position + 1] if position + 1 < len(pending) else None
                announce(
                    f"[{number}/{total}] {name}: {_outcome(record)}; "
                    + (f"next: {plan.config_name(following)}" if following else "all done")
                )
    except KeyboardInterrupt:
        # Whatever the interrupt cut short, every finished configuration is in ``document``.
        document.update(status="interrupted", updated=now_iso())
        write_json_atomic(results_path, document)
        announce(
            f"interrupted during {running}: it is not recorded"
            if running
            else "interrupted between configurations"
        )
        return False
    document.update(status="complete", updated=now_iso())
    write_json_atomic(results_path, document)
    return True


def _outcome(record: dict[str, Any]) -> str:
    seconds = f"{record.get('wall_seconds', 0.0):.1f} s"
    if record["status"] != "ok":
        return f"FAILED after {seconds}: {record['reason']}"
    result = record["result"]
    return (
        f"finished in {seconds} ({result['ms_per_step']:.1f} ms/step, "
        f"val accuracy {result['val_accuracy'][-1]:.3f})"
    )


# --------------------------------------------------------------------------------------------
# Worker side: runs in the subprocess.


class PrefixedStream(io.TextIOBase):
    """A text stream that starts every line (after ``\\n`` or ``\\r``) with ``prefix``, so Keras
    progress bars, including the redrawn ones on a terminal, name their configuration."""

    def __init__(self, stream: Any, prefix: str) -> None:
        super().__init__()
        self._stream = stream
        self._prefix = prefix
        self._at_line_start = True

    def write(self, text: str) -> int:
        pieces = []
        for piece in re.split(r"([\r\n])", text):
            if piece in ("\r", "\n"):
                self._at_line_start = True
            elif piece and self._at_line_start:
                pieces.append(self._prefix)
                self._at_line_start = False
            pieces.append(piece)
        self._stream.write("".join(pieces))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"


class NonFiniteLossError(ArithmeticError):
    """Training produced a NaN or infinite loss."""


def _make_loss_guard(name: str) -> Any:
    """A Keras callback that stops training at the first non-finite loss, naming the
    configuration, epoch, step and (float16 modes) the loss scale at that moment."""
    import keras

    from mpcore.training import current_loss_scale

    class NonFiniteLossGuard(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            loss = float(keras.ops.convert_to_numpy((logs or {}).get("loss", 0.0)))
            if math.isfinite(loss):
                return
            message = f"{name}: loss is {loss} at epoch {self.epoch + 1}, step {batch + 1}"
            scale = current_loss_scale(self.model.optimizer)
            if scale is not None:
                collapsed = " (collapsed)" if scale <= 1.0 else ""
                message += f", loss scale {scale:g}{collapsed}"
            raise NonFiniteLossError(message)

    return NonFiniteLossGuard()


def _poison_weights_callback() -> Any:
    """A callback that sets every weight of the model to NaN before the second training step, so
    the loss really turns NaN inside ``fit`` (as a diverging run's does). Every weight, not one:
    a float16 ReLU on a CPU turns NaN into 0, which would hide a poisoned first layer."""
    import keras
    import numpy as np

    class PoisonWeights(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            if batch == 1:
                for weight in self.model.trainable_weights:
                    weight.assign(np.full(weight.shape, np.nan, dtype=weight.dtype))

    return PoisonWeights()


def _inject_fault(name: str) -> list[Any]:
    """Fail on purpose if ``MPBENCH_FAULT`` names this configuration (testing the harness);
    kind ``nan`` returns the callback that makes the loss NaN at step 2 of epoch 1."""
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        target, _, kind = item.partition("=")
        if target.strip() != name:
            continue
        kind = kind.strip()
        if kind == "nan":
            return [_poison_weights_callback()]
        if kind == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "oom":
            import tensorflow as tf

            raise tf.errors.ResourceExhaustedError(None, None, f"injected fault ({FAULT_ENV})")
        raise RuntimeError(f"injected fault ({FAULT_ENV})")
    return []


def _failure_reason(error: BaseException) -> str:
    import tensorflow as tf

    first_line = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return f"out of memory: {first_line}"
    if isinstance(error, NonFiniteLossError):
        return f"non-finite loss: {first_line}"
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _exit_with_parent(parent_pid: int) -> None:
    """Stop this worker if the parent dies (e.g. SIGKILL), instead of training on as an orphan."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="mpbench-parent-watch", daemon=True).start()


def _train_in_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from mpcore.distribute import configure_logical_cpus, make_strategy

    # TensorFlow fixes its devices, and a multi-worker cluster its collectives, at the first op:
    # both must come before any other TensorFlow work in this process.
    if spec.get("cpu_replicas"):
        configure_logical_cpus(spec["cpu_replicas"])
    strategy = make_strategy(spec.get("strategy", "none"))

    import keras

    from mpcore import telemetry
    from mpcore.data import BadImage, read_ship_index, stratified_split, without_images
    from mpcore.modes import RunConfig
    from mpcore.training import TrainSettings, train

    config = RunConfig(**mode_of(spec["config"]))
    name = RunPlan.config_name(spec["config"])
    settings = TrainSettings(**spec["settings"])
    skipped = [BadImage(path, "skipped") for path in spec.get("skipped_images", [])]
    train_index, validation_index = stratified_split(
        without_images(read_ship_index(spec["data_root"]), skipped),
        spec["validation_fraction"],
        seed=settings.seed,
    )
    callbacks = [
        *_inject_fault(config.name),
        _make_loss_guard(name),
        keras.callbacks.TensorBoard(
            log_dir=spec["tensorboard_dir"], write_graph=False, profile_batch=0
        ),
    ]
    telemetry.reset_tf_peak_memory()
    with telemetry.Sampler() as sampler:
        result = train(
            config,
            settings,
            train_index,
            validation_index,
            callbacks=callbacks,
            verbose=spec["verbose"],
            strategy=strategy,
        )
    return finished_record(name, spec["config"], result.to_dict(), sampler)


def finished_record(
    name: str, config: Mapping[str, Any], result: dict[str, Any], sampler: Any
) -> dict[str, Any]:
    """The record of a configuration that trained to the end, with this process's telemetry
    (``sampler`` is the :class:`mpcore.telemetry.Sampler` that ran during training)."""
    from mpcore import telemetry

    return {
        "name": name,
        "config": dict(config),
        "status": "ok",
        "reason": None,
        "result": result,
        "telemetry": {
            "peak_rss_bytes": telemetry.peak_rss_bytes(),
            "tf_peak_memory_bytes": telemetry.tf_peak_memory_bytes(),
            "gpu": sampler.summary(),
            "gpu_series": sampler.series,
        },
    }


@contextlib.contextmanager
def _prefixed_stdout(prefix: str) -> Iterator[None]:
    original = sys.stdout
    sys.stdout = PrefixedStream(original, prefix)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = original


def worker_main(spec_path: str) -> int:
    """Entry point of a worker: train one configuration, write its record, exit 0/1/130."""
    spec = json.loads(Path(spec_path).read_text())
    _exit_with_parent(spec["parent_pid"])
    name = RunPlan.config_name(spec["config"])
    try:
        with _prefixed_stdout(f"[{name}] "):
            record = _train_in_worker(spec)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        traceback.print_exc()  # into the worker's log file, for whoever debugs the failure
        record = _failed_record(name, spec["config"], _failure_reason(error))
    write_json_atomic(Path(spec["result_path"]), record)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
