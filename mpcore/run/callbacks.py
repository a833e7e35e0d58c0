"""The worker's own Keras callbacks: the non-finite loss guard, the loss-scale watch (history and
skipped steps, summarised by :mod:`mpcore.run.lossscale`) and TensorBoard at epoch granularity.
Keras is imported inside the factories, so importing this module costs nothing until a worker
trains.
"""

from __future__ import annotations

import math
from typing import Any

from mpcore.run.lossscale import summarise_loss_scale


class NonFiniteLossError(ArithmeticError):
    """Training produced a NaN or infinite loss."""


def make_loss_guard(name: str, off_thread: bool = True) -> Any:
    """A Keras callback that stops training at the first non-finite loss, naming the
    configuration, epoch, step and (float16 modes) the loss scale that step ran with.

    Reading the loss on the host after every batch would make every step wait for the device,
    so the host could never run ahead and a GPU's ms/step would bend toward a synchronous step.
    With ``off_thread`` the callback is ``async_safe``: Keras then runs every batch-end hook on
    a worker thread (only when *all* the fit's callbacks are async-safe), the training thread
    never reads a value back, and a non-finite loss found there stops training at the next step
    and is raised on the training thread (validation or the epoch's end, whichever comes first).
    The loss scale is snapshotted on the device before each step (an asynchronous copy), so the
    scale named is the one the failing step ran with, however late the hook reads it. A cluster
    worker passes ``off_thread=False``: every worker must stop at the same step, or the others
    wait forever in the next collective."""
    import threading

    import keras

    from mpcore.train.fit import current_loss_scale

    class NonFiniteLossGuard(keras.callbacks.Callback):
        async_safe = off_thread

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self._scales: dict[tuple[int, int], Any] = {}
            self._failure: tuple[tuple[int, int], str] | None = None
            self._lock = threading.Lock()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            optimizer = self.model.optimizer
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and optimizer.built:
                self._scales[(self.epoch, batch)] = keras.ops.copy(optimizer.dynamic_scale)

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            snapshot = self._scales.pop((self.epoch, batch), None)
            loss = float(keras.ops.convert_to_numpy((logs or {}).get("loss", 0.0)))
            if math.isfinite(loss):
                return
            message = f"{name}: loss is {loss} at epoch {self.epoch + 1}, step {batch + 1}"
            if snapshot is not None:
                scale: float | None = float(keras.ops.convert_to_numpy(snapshot))
            else:
                scale = current_loss_scale(self.model.optimizer)
            if scale is not None:
                collapsed = " (collapsed)" if scale <= 1.0 else ""
                message += f", loss scale {scale:g}{collapsed}"
            with self._lock:
                if self._failure is None or (self.epoch, batch) < self._failure[0]:
                    self._failure = ((self.epoch, batch), message)
            self.model.stop_training = True
            if threading.current_thread() is threading.main_thread():
                raise NonFiniteLossError(message)

        def _raise_recorded(self, *_args: Any, **_kwargs: Any) -> None:
            if self._failure is not None:
                raise NonFiniteLossError(self._failure[1])

        on_test_begin = on_epoch_end = on_train_end = _raise_recorded

    return NonFiniteLossGuard()


def make_loss_scale_watch() -> Any:
    """A Keras callback that records, per epoch, the ``LossScaleOptimizer``'s dynamic scale and
    the steps it skipped (the steps run less the inner optimizer's applied updates); it reads
    the device once per epoch, never per step. ``summary()`` is :func:`summarise_loss_scale`'s
    record, None for an optimizer without dynamic loss scaling."""
    import keras

    from mpcore.train.fit import current_loss_scale

    class LossScaleWatch(keras.callbacks.Callback):
        async_safe = True

        def __init__(self) -> None:
            super().__init__()
            self.initial: float | None = None
            self.scales: list[float] = []
            self.skipped: list[int] = []
            self.steps: list[int] = []
            self._applied = 0
            self._batches = 0

        def _optimizer(self) -> Any:
            optimizer = self.model.optimizer
            return optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None

        def on_train_begin(self, logs: dict | None = None) -> None:
            optimizer = self._optimizer()
            if optimizer is not None:
                self.initial = current_loss_scale(optimizer) or float(optimizer.initial_scale)

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            optimizer = self._optimizer()
            if optimizer is not None:
                self._applied = int(keras.ops.convert_to_numpy(optimizer.iterations))
            self._batches = 0

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            self._batches = batch + 1  # no device read: the step count when params lack it

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            optimizer = self._optimizer()
            if optimizer is None:
                return
            applied = int(keras.ops.convert_to_numpy(optimizer.iterations)) - self._applied
            steps = int(self.params.get("steps") or self._batches)
            self.steps.append(steps)
            self.skipped.append(max(steps - applied, 0))
            self.scales.append(current_loss_scale(optimizer) or float(optimizer.initial_scale))

        def summary(self) -> dict[str, Any] | None:
            if self.initial is None:
                return None
            return summarise_loss_scale(self.initial, self.scales, self.skipped, self.steps)

    return LossScaleWatch()


def epoch_tensorboard(log_dir: str) -> Any:
    """Keras's TensorBoard callback writing epoch summaries only. Its batch hook writes nothing
    then (no profiling, no graph, no per-batch writer), so it is marked async-safe like the loss
    guard: one callback that is not would make Keras read every batch's logs on the training
    thread, a device sync per step."""
    import keras

    class EpochTensorBoard(keras.callbacks.TensorBoard):
        async_safe = True

    return EpochTensorBoard(log_dir, write_graph=False, profile_batch=0, update_freq="epoch")
