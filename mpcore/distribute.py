"""Mixed precision under ``tf.distribute``: strategies, loss scaling, local clusters, scaling.

* :func:`make_strategy` builds ``none`` (no strategy), ``mirrored`` (``MirroredStrategy`` over
  the visible GPUs, else over the logical CPUs) or ``multiworker``
  (``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``).
* :class:`ReplicaConsistentLossScaleOptimizer` is the ``LossScaleOptimizer`` mpcore compiles
  under a strategy: it skips a step when *any* replica's gradients overflowed. Keras 3's own
  checks only the first replica's (not yet all-reduced) gradients, so an overflow on another
  replica is summed into the weights as inf/NaN under ``MirroredStrategy``, and under
  ``MultiWorkerMirroredStrategy`` the workers can take different branches and hang.
* :func:`launch_local_workers` runs N worker processes on 127.0.0.1 with a generated
  ``TF_CONFIG`` each and stops every one of them on any failure, timeout or Ctrl-C;
  :func:`run_local_multiworker` uses it to train one configuration with
  ``python -m mpcore.distribute worker SPEC.json`` and verifies the workers agree.
* :func:`images_per_second_per_replica` and :func:`scaling_efficiency` turn results into
  scaling figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mpcore.modes import ModeMismatchError

STRATEGIES: tuple[str, ...] = ("none", "mirrored", "multiworker")
TF_CONFIG_ENV = "TF_CONFIG"
#: Set by the launcher in each worker's environment: the worker exits if this process dies.
LAUNCHER_PID_ENV = "MPBENCH_LAUNCHER_PID"
#: Fault injection for tests of the launcher: ``"INDEX=crash"`` makes worker INDEX kill itself
#: with SIGKILL after its first training step, ``"INDEX=error"`` makes it raise there.
FAULT_ENV = "MPBENCH_WORKER_FAULT"
#: Exit status of a worker stopped by Ctrl-C or orphaned by its launcher.
EXIT_INTERRUPTED = 130
WORKER_REPORT = "worker-{index}.json"
WORKER_LOG = "worker-{index}.log"


class StrategyError(ValueError):
    """A strategy cannot be built as asked (bad name, missing or invalid ``TF_CONFIG``)."""


class WorkerLaunchError(RuntimeError):
    """A local multi-worker run failed; every worker it started has been stopped.

    ``pids`` are the process ids of all workers started, ``log_paths`` their log files and
    ``stop_seconds`` how long stopping them took after the failure was seen.
    """

    def __init__(self, message: str, pids: Sequence[int], log_paths: Sequence[Path]) -> None:
        super().__init__(message)
        self.pids = list(pids)
        self.log_paths = list(log_paths)
        self.stop_seconds = 0.0


def parse_strategy(name: str) -> str:
    """Return ``name`` if it is a known strategy, else raise ``ValueError`` listing them."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    return name


# --------------------------------------------------------------------------------------------
# Strategies


def configure_logical_cpus(count: int) -> None:
    """Split the CPU into ``count`` logical devices (so ``mirrored`` has replicas on a CPU).

    TensorFlow fixes its devices when it first initialises them, so call this at the start of a
    process, before any tensor exists.
    """
    if count < 1:
        raise ValueError(f"logical CPU count must be positive, got {count}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        raise RuntimeError(
            f"cannot split the CPU into {count} logical devices: TensorFlow has already "
            "initialised its devices in this process (call configure_logical_cpus first)"
        ) from None


def mirrored_devices() -> list[str]:
    """The devices ``mirrored`` replicates over: every visible GPU, else every logical CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    return [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]


def read_tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG`` of this process; :class:`StrategyError` if absent or invalid."""
    raw = os.environ.get(TF_CONFIG_ENV, "").strip()
    if not raw:
        raise StrategyError(
            f"strategy 'multiworker' needs {TF_CONFIG_ENV} (set it on every host, or start "
            "local workers with --workers N)"
        )
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"]["worker"]
        index = int(tf_config["task"]["index"])
        kind = tf_config["task"]["type"]
    except (ValueError, KeyError, TypeError):
        raise StrategyError(
            f"{TF_CONFIG_ENV} is not a cluster spec like "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if kind not in ("worker", "chief") or not isinstance(workers, list) or not workers:
        raise StrategyError(f"{TF_CONFIG_ENV}: expected a non-empty worker list and a worker task")
    if kind == "worker" and not 0 <= index < len(workers):
        raise StrategyError(f"{TF_CONFIG_ENV}: task index {index} is outside 0..{len(workers) - 1}")
    return tf_config


def is_chief(tf_config: Mapping[str, Any]) -> bool:
    """Whether this task writes the results: the chief, or worker 0 when there is no chief."""
    task = tf_config["task"]
    has_chief = bool(tf_config["cluster"].get("chief"))
    return task["type"] == "chief" or (not has_chief and int(task["index"]) == 0)


#: The strategies made in this process, by name and devices (see :func:`make_strategy`).
_MADE: dict[tuple[str, ...], tf.distribute.Strategy] = {}


def make_strategy(name: str, devices: Sequence[str] | None = None) -> tf.distribute.Strategy | None:
    """The strategy called ``name`` (None for ``none``).

    ``mirrored`` replicates over ``devices``, by default :func:`mirrored_devices`;
    ``multiworker`` reads ``TF_CONFIG`` and must be built before TensorFlow runs any op. Each
    strategy is made once per process and reused: a second ``MirroredStrategy`` hands out the
    first one's collective instance keys again, and its all-reduces then abort with "Shape
    mismatch in the collective instance" (seen training float32, then mixed_float16).
    """
    parse_strategy(name)
    if name == "none":
        return None
    if name == "mirrored":
        chosen = tuple(devices or mirrored_devices())
        key = (name, *chosen)
        if key not in _MADE:
            _MADE[key] = tf.distribute.MirroredStrategy(list(chosen))
        return _MADE[key]
    read_tf_config()
    if (name,) not in _MADE:
        _MADE[(name,)] = NestReducingMultiWorkerStrategy()
    return _MADE[(name,)]


class NestReducingMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` works the way Keras 3's ``fit`` calls it.

    Two calls fail with the stock strategy (keras-team/keras#20585): ``fit`` reduces its first
    (images, labels) batch, a nest, which ``reduce`` does not take ("Attempt to convert a value
    (PerReplica...)"); and it reduces every scalar metric with ``axis=0``, which a scalar does
    not have. Here each element of a nest is reduced in turn (in the same order on every
    worker), and a scalar is reduced across replicas, which is what ``axis=0`` means for it.
    """

    def reduce(self, reduce_op: Any, value: Any, axis: int | None) -> Any:
        reduce_one = super().reduce

        def reduce_item(item: Any) -> Any:
            rank = self.experimental_local_results(item)[0].shape.rank
            return reduce_one(reduce_op, item, None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_item, value)


def check_replicated(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Raise :class:`ModeMismatchError` unless ``model`` (and its optimizer, once built) was
    created in ``strategy.scope()``: a model built outside trains on one device only."""
    problems = []
    if model.distribute_strategy is not strategy:
        problems.append("the model was not built in the strategy's scope")
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.variables)
    if optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    local = [v.path for v in variables if not isinstance(v.value, tf.distribute.DistributedValues)]
    # With one replica (OneDeviceStrategy) variables stay plain; with more they must be mirrored.
    if local and strategy.num_replicas_in_sync > 1:
        problems.append(f"{len(local)} variable(s) are not mirrored, e.g. {local[0]}")
    if problems:
        raise ModeMismatchError(f"{type(strategy).__name__}: " + "; ".join(problems))


@keras.saving.register_keras_serializable(package="mpbench")
class ReplicaConsistentLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """A ``LossScaleOptimizer`` whose overflow check covers every replica's gradients.

    The finite flag is all-reduced before the step is applied or skipped, so all replicas skip
    together and the single (mirrored) loss scale halves once. Without a strategy, or with one
    replica, it is Keras's ``LossScaleOptimizer``.
    """

    def check_finite(self, grads: Sequence[Any]) -> Any:
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        overflowed = context.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
        )
        return tf.equal(overflowed, 0.0)


class ReplicaStatisticsAverager(keras.callbacks.Callback):
    """Average the per-replica copies of non-trainable statistics across the replicas.

    Keras 3 creates BatchNormalization's moving mean and variance with aggregation ``none``, so
    under ``tf.distribute`` each replica updates only its own copy from its own shard and the
    copies drift apart (the saved model gets whichever copy the first replica holds). tf.keras 2
    averaged them across replicas when read; this does the same before every validation and at
    the end of training, so all replicas, and all workers, hold identical weights.
    """

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        super().__init__()
        self.strategy = strategy
        self._average: Any = None

    def _build(self) -> Any:
        statistics = [
            variable
            for variable in self.model.non_trainable_variables
            if variable.aggregation == "none" and "float" in str(variable.dtype)
        ]

        def average_on_replica() -> None:
            context = tf.distribute.get_replica_context()
            for variable in statistics:
                # Reading in a replica context gives this replica's copy; the assignment (with
                # aggregation "none") writes this replica's copy, with the same mean everywhere.
                local = tf.identity(variable.value)
                variable.assign(context.all_reduce(tf.distribute.ReduceOp.MEAN, local))

        return tf.function(lambda: self.strategy.run(average_on_replica))

    def average(self) -> None:
        if self.strategy.num_replicas_in_sync == 1:
            return
        if self._average is None:
            self._average = self._build()
        self._average()

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.average()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.average()


def weight_checksums(model: keras.Model) -> dict[str, str]:
    """SHA-256 of each variable of ``model`` (this replica's copy), by variable path."""
    return {
        variable.path: hashlib.sha256(
            np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes()
        ).hexdigest()
        for variable in model.weights
    }


def weights_checksum(model: keras.Model) -> str:
    """One SHA-256 over every variable of ``model`` (this replica's copy), in layer order."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Scaling figures


def images_per_second_per_replica(result: Mapping[str, Any]) -> float:
    """Training throughput of one replica, from a ``RunResult.to_dict()`` record."""
    return float(result["images_per_second"]) / int(result.get("replicas", 1))


def scaling_efficiency(
    images_per_second: float, replicas: int, single_replica_images_per_second: float
) -> float:
    """Throughput per replica relative to one replica alone: 1.0 is perfect linear scaling."""
    if replicas < 1 or single_replica_images_per_second <= 0:
        raise ValueError("scaling efficiency needs replicas >= 1 and a positive baseline")
    return images_per_second / (replicas * single_replica_images_per_second)


# --------------------------------------------------------------------------------------------
# Local clusters: TF_CONFIG and the launcher


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
    return ports


def local_tf_configs(count: int, host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """One ``TF_CONFIG`` per worker of a ``count``-worker cluster on ``host`` (free ports)."""
    if count < 1:
        raise ValueError(f"worker count must be positive, got {count}")
    workers = [f"{host}:{port}" for port in free_ports(count, host)]
    return [
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        for index in range(count)
    ]


@dataclasses.dataclass(frozen=True)
class LaunchOutcome:
    """A finished local multi-worker run: the chief's result and what ran."""

    result: dict[str, Any]
    pids: list[int]
    log_paths: list[Path]
    seconds: float


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _stop_all(processes: Sequence[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM every worker's process group, SIGKILL what is left after ``grace_seconds``,
    and reap them all (so no zombie keeps a pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, sig)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            time.sleep(0.05)
    for process in processes:
        process.wait()


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if lines:
            return lines[-1][:300]
    return ""


def _failure_message(index: int, count: int, process: subprocess.Popen, log: Path) -> str:
    code = process.returncode
    how = f"was killed by {_signal_name(code)}" if code < 0 else f"exited with status {code}"
    report = log.with_name(WORKER_REPORT.format(index=index))
    reason = ""
    with contextlib.suppress(OSError, ValueError):
        reason = json.loads(report.read_text()).get("reason") or ""
    detail = (
        f": {reason}" if reason else (f"; last log line: {_last_line(log)}" if code > 0 else "")
    )
    return (
        f"worker {index} of {count} (pid {process.pid}) {how}{detail}; "
        f"stopped the other worker(s) (log: {log})"
    )


def launch_local_workers(
    count: int,
    worker_argv: Sequence[str],
    timeout: float,
    *,
    result_path: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    stop_grace_seconds: float = 5.0,
    poll_seconds: float = 0.2,
    echo_chief: bool = False,
) -> LaunchOutcome:
    """Run ``worker_argv`` as ``count`` local workers of one cluster and return the chief's
    result (the JSON the chief, worker 0, writes to ``result_path``).

    Each worker gets its own ``TF_CONFIG`` (127.0.0.1, free ports) and process group, and logs
    to ``log_dir/worker-N.log`` (``echo_chief`` sends worker 0's stdout to ours instead); a
    failure reason a worker leaves in ``log_dir/worker-N.json`` is quoted in the error. When a
    worker fails or dies, the run exceeds ``timeout`` seconds, or Ctrl-C arrives, every worker is
    stopped (SIGTERM, then SIGKILL after ``stop_grace_seconds``) before
    :class:`WorkerLaunchError` (or ``KeyboardInterrupt``) is raised.
    """
    result_path, log_dir = Path(result_path), Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        result_path.unlink()  # a stale result must not pass for this run's
    base_env = {**os.environ, **(env or {}), LAUNCHER_PID_ENV: str(os.getpid())}
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    processes: list[subprocess.Popen] = []
    log_paths: list[Path] = []
    started = time.monotonic()
    try:
        for index, tf_config in enumerate(local_tf_configs(count)):
            log_path = log_dir / WORKER_LOG.format(index=index)
            log_paths.append(log_path)
            with open(log_path, "w") as log:
                stdout = None if echo_chief and index == 0 else log
                processes.append(
                    subprocess.Popen(
                        list(worker_argv),
                        stdout=stdout,
                        stderr=log,
                        stdin=subprocess.DEVNULL,
                        env={**base_env, TF_CONFIG_ENV: json.dumps(tf_config)},
                        start_new_session=True,  # own process group; Ctrl-C reaches us only
                    )
                )
        while True:
            for index, process in enumerate(processes):
                if process.poll() not in (None, 0):
                    raise WorkerLaunchError(
                        _failure_message(index, count, process, log_paths[index]),
                        [p.pid for p in processes],
                        log_paths,
                    )
            if all(process.returncode == 0 for process in processes):
                break
            if time.monotonic() - started > timeout:
                raise WorkerLaunchError(
                    f"{count}-worker run timed out after {timeout:g} s; stopped every worker "
                    f"(logs in {log_dir})",
                    [p.pid for p in processes],
                    log_paths,
                )
            time.sleep(poll_seconds)
    except BaseException as error:
        stopping = time.monotonic()
        _stop_all(processes, stop_grace_seconds)
        if isinstance(error, WorkerLaunchError):
            error.stop_seconds = time.monotonic() - stopping
        raise
    pids = [p.pid for p in processes]
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError) as error:
        raise WorkerLaunchError(
            f"every worker exited cleanly but the chief's result {result_path} is unreadable "
            f"({type(error).__name__}); see {log_paths[0]}",
            pids,
            log_paths,
        ) from None
    return LaunchOutcome(result, pids, log_paths, time.monotonic() - started)


def worker_command(spec_path: Path) -> list[str]:
    """The command line of one training worker reading ``spec_path``."""
    return [sys.executable, "-m", "mpcore.distribute", "worker", str(spec_path)]


def run_local_multiworker(
    spec: Mapping[str, Any],
    workers: int,
    timeout: float,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    echo_chief: bool = False,
) -> LaunchOutcome:
    """Train one configuration with ``workers`` local workers under ``multiworker``.

    ``spec`` holds ``config`` (``RunConfig.to_dict()``), ``settings`` (``TrainSettings``
    fields; ``batch_size`` is per replica), ``data_root`` and optionally
    ``validation_fraction`` (0.2), ``verbose`` (0) and ``tensorboard_dir``. Logs, worker reports
    and the chief's ``result.json`` go to ``workdir``. The outcome's result is the chief's
    record, shaped like :mod:`mpcore.runner`'s (``name``, ``config``, ``status``, ``reason``,
    ``result`` = ``RunResult.to_dict()``, ``telemetry``) plus ``weights_sha256`` and ``workers``
    (every worker's report);
    raises :class:`WorkerLaunchError` if a worker fails or the workers' weights differ.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.json"
    full_spec = {**spec, "result_path": str(workdir / "result.json"), "worker_dir": str(workdir)}
    spec_path.write_text(json.dumps(full_spec, indent=2))
    for index in range(workers):
        with contextlib.suppress(FileNotFoundError):
            (workdir / WORKER_REPORT.format(index=index)).unlink()
    outcome = launch_local_workers(
        workers,
        worker_command(spec_path),
        timeout,
        result_path=workdir / "result.json",
        log_dir=workdir,
        env=env,
        echo_chief=echo_chief,
    )
    reports = [
        json.loads((workdir / WORKER_REPORT.format(index=index)).read_text())
        for index in range(workers)
    ]
    checksums = {report["weights_sha256"] for report in reports}
    if len(checksums) != 1:
        raise WorkerLaunchError(
            f"the {workers} workers ended with different weights (checksums "
            f"{', '.join(sorted(c[:12] for c in checksums))}); the replicas did not stay in sync",
            outcome.pids,
            outcome.log_paths,
        )
    outcome.result["workers"] = reports
    return outcome


# --------------------------------------------------------------------------------------------
# Worker side: runs in each worker process.


def _exit_with_launcher() -> None:
    """Exit if the launcher dies (even by SIGKILL) instead of waiting on peers forever."""
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher:
        return

    def watch() -> None:
        while os.getppid() == int(launcher):
            time.sleep(0.5)
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="mpbench-launcher-watch", daemon=True).start()


class _WorkerProbe(keras.callbacks.Callback):
    """Records the final weights' checksum; injects :data:`FAULT_ENV` faults after step 1."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.checksum = ""
        self.by_variable: dict[str, str] = {}
        self.fault = ""
        for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
            target, _, kind = item.partition("=")
            if target.strip() == str(index):
                self.fault = kind.strip()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.fault == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fault == "error":
            raise RuntimeError(f"injected fault ({FAULT_ENV})")

    def on_train_end(self, logs: dict | None = None) -> None:
        self.checksum = weights_checksum(self.model)
        self.by_variable = weight_checksums(self.model)


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, allow_nan=True))
    os.replace(temporary, path)


def worker_main(spec_path: str) -> int:
    """Train the spec's configuration as one worker of the ``TF_CONFIG`` cluster.

    Every worker writes ``worker-INDEX.json`` (pid, replicas, weights checksum or failure
    reason) to the spec's ``worker_dir``; the chief also writes the result record.
    """
    _exit_with_launcher()
    spec = json.loads(Path(spec_path).read_text())
    tf_config = read_tf_config()
    index = int(tf_config["task"]["index"])
    report_path = Path(spec["worker_dir"]) / WORKER_REPORT.format(index=index)
    report: dict[str, Any] = {"index": index, "pid": os.getpid(), "status": "failed"}
    try:
        # The strategy must exist before TensorFlow runs its first op in this process.
        strategy = make_strategy(spec.get("strategy", "multiworker"))
        report["replicas"] = strategy.num_replicas_in_sync if strategy else 1
        record = _train_as_worker(spec, strategy, index, report)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        traceback.print_exc()  # into the worker's log
        first = (str(error).strip().splitlines() or [""])[0]
        report["reason"] = f"{type(error).__name__}: {first}" if first else type(error).__name__
        _write_json(report_path, report)
        return 1
    _write_json(report_path, report)
    if is_chief(tf_config):
        _write_json(Path(spec["result_path"]), record)
    return 0


def _train_as_worker(
    spec: Mapping[str, Any],
    strategy: tf.distribute.Strategy | None,
    index: int,
    report: dict[str, Any],
) -> dict[str, Any]:
    from mpcore import telemetry
    from mpcore.data import read_ship_index, stratified_split
    from mpcore.modes import RunConfig
    from mpcore.training import TrainSettings, train

    config = RunConfig(**spec["config"])
    settings = TrainSettings(**spec["settings"])
    train_index, validation_index = stratified_split(
        read_ship_index(spec["data_root"]), spec.get("validation_fraction", 0.2), settings.seed
    )
    probe = _WorkerProbe(index)
    callbacks: list[keras.callbacks.Callback] = [probe]
    if spec.get("tensorboard_dir") and index == 0:
        callbacks.append(
            keras.callbacks.TensorBoard(spec["tensorboard_dir"], write_graph=False, profile_batch=0)
        )
    telemetry.reset_tf_peak_memory()
    with telemetry.Sampler() as sampler:
        result = train(
            config,
            settings,
            train_index,
            validation_index,
            callbacks=callbacks,
            verbose=spec.get("verbose", 0) if index == 0 else 0,
            strategy=strategy,
        )
    if not all(math.isfinite(value) for value in result.loss):
        raise ArithmeticError(f"{config.name}: non-finite training loss {result.loss}")
    report.update(status="ok", weights_sha256=probe.checksum, variable_sha256=probe.by_variable)
    from mpcore.runner import finished_record  # the chief's record matches the runner's

    record = finished_record(config.name, config.to_dict(), result.to_dict(), sampler)
    return {**record, "weights_sha256": probe.checksum}


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m mpcore.distribute worker SPEC.json", file=sys.stderr)
        return 2
    return worker_main(argv[1])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
