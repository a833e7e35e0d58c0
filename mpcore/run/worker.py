"""The training worker: ``python -m mpcore.run.worker SPEC.json`` trains one configuration.

The same function serves a lone worker (one process per configuration, the default) and every
worker of a multi-worker cluster (``--workers N`` or ``TF_CONFIG``), so both have the same loss
guard, the same skipped-image handling, the same telemetry and the same atomic writer. A lone
worker, and the chief of a cluster, writes the configuration's record to the spec's result path;
in a cluster every worker also writes ``worker-INDEX.json`` (pid, replicas, weights checksums or
the failure reason) for the launcher to compare and quote.

Fault injection for tests of the harness itself: see :mod:`mpcore.run.process`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mpcore.run.callbacks import (
    NonFiniteLossError,
    epoch_tensorboard,
    make_loss_guard,
    make_loss_scale_watch,
)
from mpcore.run.files import write_json_atomic
from mpcore.run.launcher import WORKER_REPORT
from mpcore.run.process import (
    EXIT_INTERRUPTED,
    FAULT_ENV,
    WORKER_FAULT_ENV,
    exit_now,
    exit_with_parent,
    planted_fault,
)
from mpcore.run.spec import WorkerSpec
from mpcore.run.store import failed_record, finished_record


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


@contextlib.contextmanager
def prefixed_stdout(prefix: str) -> Iterator[None]:
    original = sys.stdout
    sys.stdout = PrefixedStream(original, prefix)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = original


def _fault_callbacks(name: str, index: int, repeat: int | None = None) -> list[Any]:
    """Fail on purpose where the environment plants a fault (testing the harness): on this
    configuration (``MPBENCH_FAULT``, before training, ``nan`` at step 2, ``kill@R`` after the
    first step of repeat R) or on this worker of a cluster (``MPBENCH_WORKER_FAULT``, after its
    first step)."""
    import keras
    import numpy as np

    callbacks: list[Any] = []
    kind = planted_fault(FAULT_ENV, name)
    if kind.startswith("kill@"):
        if repeat is None or kind != f"kill@{repeat + 1}":
            kind = ""
        else:

            class KillSelf(keras.callbacks.Callback):
                def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                    os.kill(os.getpid(), signal.SIGKILL)

            callbacks.append(KillSelf())
            kind = ""
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "oom":
        import tensorflow as tf

        raise tf.errors.ResourceExhaustedError(None, None, f"injected fault ({FAULT_ENV})")
    if kind == "nan":

        class PoisonWeights(keras.callbacks.Callback):
            """Every weight to NaN before the second step, so the loss really turns NaN inside
            ``fit``. Every weight, not one: a float16 ReLU on a CPU turns NaN into 0, which
            would hide a poisoned first layer."""

            def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
                if batch == 1:
                    for weight in self.model.trainable_weights:
                        weight.assign(np.full(weight.shape, np.nan, dtype=weight.dtype))

        callbacks.append(PoisonWeights())
    elif kind:
        raise RuntimeError(f"injected fault ({FAULT_ENV})")

    worker_kind = planted_fault(WORKER_FAULT_ENV, str(index))
    if worker_kind:

        class WorkerFault(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                if worker_kind == "crash":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected fault ({WORKER_FAULT_ENV})")

        callbacks.append(WorkerFault())
    return callbacks


def _out_of_memory(error: BaseException) -> bool:
    """TensorFlow's ResourceExhaustedError; on JAX an XLA runtime error whose status is
    RESOURCE_EXHAUSTED; on torch ``torch.OutOfMemoryError``."""
    from mpcore.probe import backend

    if backend.is_tensorflow():
        import tensorflow as tf

        return isinstance(error, tf.errors.ResourceExhaustedError)
    return type(error).__name__ == "OutOfMemoryError" or str(error).startswith("RESOURCE_EXHAUSTED")


def failure_reason(error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    if _out_of_memory(error):
        return f"out of memory: {first_line}"
    if isinstance(error, NonFiniteLossError):
        return f"non-finite loss: {first_line}"
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def train_spec(spec: WorkerSpec, strategy: Any, index: int, report: dict[str, Any]) -> dict:
    """Train the spec's configuration under ``strategy`` (None: no strategy) as worker
    ``index``; return the configuration's record and, in a cluster, fill ``report`` with the
    final weights' checksums for the launcher to compare."""
    import keras

    from mpcore.data.ships import BadImage, read_ship_index, stratified_split, without_images
    from mpcore.precision.modes import RunConfig
    from mpcore.probe import backend, telemetry
    from mpcore.train.fit import train
    from mpcore.train.settings import TrainSettings
    from mpcore.user.ownmodel import array_splits, is_array_data, load_float32

    class Checksums(keras.callbacks.Callback):
        # After training, once the replicas' statistics have been averaged (that callback runs
        # before the caller's), so every worker's checksum covers the same weights.
        def on_train_end(self, logs: dict | None = None) -> None:
            from mpcore.train.replicas import weight_checksums, weights_checksum

            report.update(
                weights_sha256=weights_checksum(self.model),
                variable_sha256=weight_checksums(self.model),
            )

    config = RunConfig(**spec.mode)
    settings = TrainSettings(**spec.settings)
    skipped = [BadImage(path, "skipped") for path in spec.skipped_images]
    if is_array_data(spec.data_root):  # a user's model on its own arrays (.npz, module:fn)
        model = load_float32(settings.model).model
        train_index, validation_index = array_splits(
            spec.data_root, model, spec.validation_fraction, settings.seed
        )
    else:
        train_index, validation_index = stratified_split(
            without_images(read_ship_index(spec.data_root), skipped),
            spec.validation_fraction,
            seed=settings.seed,
        )
    guard = make_loss_guard(spec.name, off_thread=spec.worker_dir is None)
    watch = make_loss_scale_watch()
    callbacks = [*_fault_callbacks(config.name, index, spec.repeat), guard, watch]
    if spec.worker_dir is not None:
        callbacks.append(Checksums())
    # Keras writes TensorBoard summaries through tf.summary: none where TensorFlow is absent.
    if spec.tensorboard_dir and index == 0 and importlib.util.find_spec("tensorflow"):
        callbacks.append(epoch_tensorboard(spec.tensorboard_dir))
    if backend.is_tensorflow():
        telemetry.reset_tf_peak_memory()
    else:
        backend.reset_peak_memory()
    with telemetry.Sampler() as sampler:
        result = train(
            config,
            settings,
            train_index,
            validation_index,
            callbacks=callbacks,
            verbose=spec.verbose if index == 0 else 0,
            strategy=strategy,
        )
    record = finished_record(spec.name, spec.config, result.to_dict(), sampler)
    record["result"]["loss_scaling"] = watch.summary()
    if spec.worker_dir is not None:
        report["status"] = "ok"
        record["weights_sha256"] = report["weights_sha256"]
    return record


def _strategy(spec: WorkerSpec, report: dict[str, Any]) -> tuple[Any, int]:
    """The spec's strategy and its replica count: a ``tf.distribute`` strategy on TensorFlow; on
    JAX none, with ``keras.distribution.DataParallel`` set for the process instead."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        from mpcore.train.keras_dist import data_parallel

        return None, data_parallel(spec.strategy, spec.cpu_replicas)
    # TensorFlow fixes its devices, and a multi-worker cluster its collectives, at the first
    # op: both must come before any other TensorFlow work in this process.
    from mpcore.train.replicas import (
        configure_logical_cpus,
        is_chief,
        make_strategy,
        read_tf_config,
    )

    if spec.cpu_replicas:
        configure_logical_cpus(spec.cpu_replicas)
    if spec.strategy == "multiworker":
        tf_config = read_tf_config()
        report["index"], report["chief"] = int(tf_config["task"]["index"]), is_chief(tf_config)
    strategy = make_strategy(spec.strategy)
    if spec.strategy == "multiworker" and threading.current_thread() is threading.main_thread():
        # The strategy starts TensorFlow's coordination service, whose preemption notifier
        # takes SIGTERM over: it only logs "SIGTERM caught" (mpbench keeps no preemption
        # checkpoints), so a worker waiting in an all-reduce for a dead peer outlived the
        # launcher's SIGTERM until SIGKILL came after the grace period (5 s). The default
        # action again: SIGTERM ends a cluster worker at once, as it ends a lone one.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy, strategy.num_replicas_in_sync if strategy is not None else 1


def worker_main(spec_path: str, parent_pid: int | None = None) -> int:
    """Entry point of a worker: train one configuration, write its record, exit 0/1/130.

    The worker stops if its parent dies: the spec's ``parent_pid`` (``mpbench run``), or
    ``parent_pid`` when given (the fork server, which stops when ``mpbench run`` does)."""
    spec = WorkerSpec.read(spec_path)
    exit_with_parent(parent_pid or spec.parent_pid)
    index, chief = 0, True
    report: dict[str, Any] = {"index": 0, "pid": os.getpid(), "status": "failed"}
    try:
        strategy, replicas = _strategy(spec, report)
        index = report["index"]
        chief = report.pop("chief", True)
        report["replicas"] = replicas
        with prefixed_stdout(f"[{spec.name}] "):
            record = train_spec(spec, strategy, index, report)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        traceback.print_exc()  # into the worker's log file, for whoever debugs the failure
        record = failed_record(spec.name, spec.config, failure_reason(error))
        report["reason"] = record["reason"]
    if spec.worker_dir is not None:
        write_json_atomic(Path(spec.worker_dir) / WORKER_REPORT.format(index=index), report)
    if chief:
        write_json_atomic(Path(spec.result_path), record)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m mpcore.run.worker SPEC.json", file=sys.stderr)
        sys.exit(2)
    exit_now(worker_main(sys.argv[1]))
