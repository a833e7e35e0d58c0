"""The main job's loss guard: a NaN is named at its epoch, step and loss scale without the
training thread reading any value back per step (the batch hooks run off the training thread)."""

from __future__ import annotations

import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from mpcore.precision.modes import RunConfig, applied
from mpcore.probe import backend
from mpcore.run.callbacks import NonFiniteLossError, epoch_tensorboard, make_loss_guard
from mpcore.train.fit import build_compiled
from mpcore.train.settings import TrainSettings


class ThreadProbe(keras.callbacks.Callback):
    """Records which thread ran each batch-end hook (async-safe itself, so it changes nothing)."""

    async_safe = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.threads.add(threading.current_thread().name)


class PoisonBeforeSecondStep(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if batch == 1:
            for weight in self.model.trainable_weights:
                weight.assign(np.full(weight.shape, np.nan, dtype=weight.dtype))


def _fit(callbacks: list[keras.callbacks.Callback]) -> None:
    config = RunConfig("mixed_float16", "off")
    with applied(config):
        model = build_compiled(config, TrainSettings(model="small", image_size=8))
        x = np.random.default_rng(0).random((64, 8, 8, 3), dtype=np.float32)
        y = np.arange(64) % 5
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)


KERAS_HOOKS_ON_THE_TRAINING_THREAD = pytest.mark.skipif(
    backend.is_tensorflow(),
    reason="on TensorFlow Keras reads every batch's logs on the training thread whatever the "
    "callbacks (its IS_THREAD_SAFE is False); runs on JAX and torch",
)


@pytest.mark.slow
@pytest.mark.cpu(reason="a model on the CPU, every backend")
def test_a_planted_nan_is_named_at_its_step_and_the_scale_it_ran_with(tmp_path: Path) -> None:
    guard = make_loss_guard("mixed_float16+xla_off")
    callbacks = [PoisonBeforeSecondStep(), guard, epoch_tensorboard(str(tmp_path))]
    with pytest.raises(NonFiniteLossError) as caught:
        _fit(callbacks)
    # The step that ran with NaN weights, at the scale it ran with (the initial 2**15: the first
    # step was finite), although off the training thread the hook may read it steps later.
    assert str(caught.value) == (
        "mixed_float16+xla_off: loss is nan at epoch 1, step 2, loss scale 32768"
    )


@KERAS_HOOKS_ON_THE_TRAINING_THREAD
@pytest.mark.cpu(reason="which thread runs Keras's batch hooks, for a model on the CPU")
def test_the_workers_callbacks_leave_the_batch_hooks_off_the_training_thread(
    tmp_path: Path,
) -> None:
    probe = ThreadProbe()
    _fit([make_loss_guard("float32+xla_off"), epoch_tensorboard(str(tmp_path)), probe])
    assert probe.threads and threading.main_thread().name not in probe.threads


@KERAS_HOOKS_ON_THE_TRAINING_THREAD
@pytest.mark.cpu(reason="which thread runs Keras's batch hooks, for a model on the CPU")
def test_a_guard_that_is_not_async_safe_puts_every_hook_back_on_the_training_thread() -> None:
    # The control for the test above: a cluster worker's guard (off_thread=False) makes Keras
    # run every batch hook on the training thread, a host read of the loss per step.
    probe = ThreadProbe()
    _fit([make_loss_guard("float32+xla_off", off_thread=False), probe])
    assert probe.threads == {threading.main_thread().name}


@pytest.mark.slow
@pytest.mark.tensorflow_only
@pytest.mark.cpu(reason="which thread runs Keras's batch hooks, for a model on the CPU")
def test_on_tensorflow_keras_reads_every_batch_on_the_training_thread() -> None:
    # Why the guard costs no extra device sync on TensorFlow: Keras itself converts every
    # batch's logs to Python numbers on the training thread there, with any callbacks. If a
    # Keras release changes that, this fails and the guard's docs need revisiting.
    probe = ThreadProbe()
    _fit([make_loss_guard("float32+xla_off"), probe])
    assert probe.threads == {threading.main_thread().name}
