"""The training-step harness on JAX and PyTorch: Keras's own compiled train function.

The TensorFlow path (:func:`mpcore.bench.stepbench.prepared_step`) times Keras's compiled train
function by default (``--mp-step fit``) or mpcore's own ``tf.function`` step (``custom``). On
the other Keras backends the step is always the one ``model.fit`` runs: ``model.compile``'s
train function, jitted by ``jax.jit`` (XLA ``jit``) or ``torch.compile``, with Keras's loss
scaling, metrics and optimizer; nothing is written by hand. :func:`prepared_keras_step` builds and
verifies the model exactly as the TensorFlow path does, puts one random batch on the backend's
default device (the GPU when one is visible), and times the first step (tracing and compilation,
through the public ``train_on_batch``) on its own clock. A round is then K calls of the train
function on that resident batch, ending in a device synchronisation.

``train_on_batch`` itself is not used for the timed steps: it converts the logs to numpy, which
waits for the device after every step. On JAX the function is pure, so the harness threads the
training state through it as ``fit`` does and writes it back into the model's variables once per
round (:meth:`KerasPreparedStep.run_round`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import keras

from mpcore.bench.stepbench import PreparedStep, isolated
from mpcore.precision.modes import RunConfig
from mpcore.probe import backend
from mpcore.train.fit import build_compiled
from mpcore.train.settings import TrainSettings

#: The four parts of Keras's JAX training state, in the order its train function returns them.
_JAX_STATE = (
    "trainable_variables",
    "non_trainable_variables",
    "optimizer_variables",
    "metrics_variables",
)


class KerasTrainStep:
    """``step() -> loss``: one call of ``model.train_function`` (already made) on the resident
    batch, the signature :meth:`PreparedStep.run_round` calls."""

    def __init__(self, model: keras.Model, images: Any, labels: Any) -> None:
        self.model = model
        self.batch = (images, labels)
        self.jax = backend.name() == "jax"
        self._state: Any = None
        model.make_train_function()

    def __call__(self) -> Any:
        if not self.jax:  # torch: the function updates the variables in place
            return self.model.train_function([self.batch])["loss"]
        if self._state is None:
            self._state = self.model._get_jax_state(
                **dict.fromkeys(_JAX_STATE, True), purge_model_variables=False
            )
        logs, self._state = self.model.train_function(self._state, iter([self.batch]))
        return logs["loss"]

    def sync_state(self) -> None:
        """Write the threaded JAX state back into the model's variables (no-op elsewhere)."""
        if self._state is None:
            return
        self.model._jax_state = dict(zip(_JAX_STATE, self._state, strict=True))
        self.model._jax_state_synced = False
        self.model.jax_state_sync()
        self._state = None


@dataclasses.dataclass
class KerasPreparedStep(PreparedStep):
    """A :class:`PreparedStep` whose step is :class:`KerasTrainStep`."""

    def run_round(self) -> float:
        value = super().run_round()
        self.step.sync_state()  # inside the round, like fit's end of epoch: a few ms per round
        return value


def resident_keras_batch(
    batch_size: int, image_size: int, num_classes: int, seed: int = 0
) -> tuple[Any, Any]:
    """A random batch of preprocessed-range images and int32 labels as backend tensors, on the
    backend's default device."""
    images = keras.random.uniform((batch_size, image_size, image_size, 3), -1.0, 1.0, seed=seed)
    labels = keras.random.randint((batch_size,), 0, num_classes, seed=seed + 1, dtype="int32")
    return images, labels


@contextlib.contextmanager
def prepared_keras_step(
    config: RunConfig,
    settings: TrainSettings,
    steps_per_round: int,
    num_classes: int = 5,
) -> Iterator[KerasPreparedStep]:
    """Build ``config`` in isolation on the JAX or torch backend and yield its compiled step;
    the dtype policy is restored on exit (:func:`mpcore.precision.modes.applied`)."""
    if steps_per_round < 1:
        raise ValueError(f"steps per round must be positive, got {steps_per_round}")
    with isolated(config, settings.seed) as made:
        model = build_compiled(config, settings)  # raises unless the model is in its mode
        images, labels = resident_keras_batch(
            settings.batch_size, settings.resolved_image_size, num_classes, settings.seed
        )
        start = time.perf_counter()
        model.train_on_batch(images, labels)  # builds the optimizer, traces and compiles
        step = KerasTrainStep(model, images, labels)
        backend.sync()
        prepared = KerasPreparedStep.after_first_step(
            config, settings, model, step, (images, labels), steps_per_round, start
        )
        made.append(prepared)
        del model, step, images, labels
        yield prepared
