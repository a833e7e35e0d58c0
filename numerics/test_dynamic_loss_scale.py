"""Claim 4: Keras dynamic loss scaling follows its rules exactly, in powers of two."""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np

from mpcore.precision.modes import RunConfig, applied
from mpcore.train.fit import current_loss_scale
from numerics.helpers import apply_gradients


def built_loss_scale_optimizer(
    variable: keras.Variable, **options: float
) -> keras.optimizers.LossScaleOptimizer:
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5), **options)
    optimizer.build([variable])
    return optimizer


def test_the_initial_loss_scale_is_2_pow_15() -> None:
    """A LossScaleOptimizer with default arguments starts at 2**15 = 32768 exactly."""
    variable = keras.Variable(np.ones(3, np.float32))
    assert current_loss_scale(built_loss_scale_optimizer(variable)) == 2.0**15


def test_a_non_finite_step_leaves_variables_untouched_and_halves_the_scale() -> None:
    """Each step with an inf (or NaN) gradient is skipped and halves the scale: starting at 400,
    four such steps give 200, 100, 50, 25, and the variable keeps its exact value."""
    start = np.float32([1.0, -2.0, 3.5])
    variable = keras.Variable(start)
    optimizer = built_loss_scale_optimizer(variable, initial_scale=400.0)
    trace = []
    for bad in (np.inf, np.nan, -np.inf, np.inf):
        apply_gradients(optimizer, [np.float32([0.25, bad, 0.5])], [variable])
        trace.append(current_loss_scale(optimizer))
        np.testing.assert_array_equal(variable.numpy(), start)
    assert trace == [200.0, 100.0, 50.0, 25.0]
    assert int(optimizer.iterations.numpy()) == 0  # the inner optimizer never ran


def test_finite_steps_double_the_scale_every_dynamic_growth_steps() -> None:
    """With finite gradients the scale doubles after every ``dynamic_growth_steps`` steps:
    initial 2, growth 2, eight steps give 2, 4, 4, 8, 8, 16, 16, 32; every step is applied,
    with the gradient divided by the scale in force."""
    variable = keras.Variable(np.zeros(1, np.float32))
    optimizer = built_loss_scale_optimizer(variable, initial_scale=2.0, dynamic_growth_steps=2)
    trace, expected_value = [], 0.0
    for _ in range(8):
        scale = current_loss_scale(optimizer)
        # A scaled gradient of 2 * scale unscales to 2; SGD(0.5) then subtracts exactly 1.
        apply_gradients(optimizer, [np.float32([2.0 * scale])], [variable])
        expected_value -= 1.0
        trace.append(current_loss_scale(optimizer))
        assert variable.numpy().item() == expected_value
    assert trace == [2.0, 4.0, 4.0, 8.0, 8.0, 16.0, 16.0, 32.0]
    assert int(optimizer.iterations.numpy()) == 8


class BatchLossScale(keras.callbacks.Callback):
    """The loss scale after every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.trace.append(current_loss_scale(self.model.optimizer))


def test_fit_whose_first_steps_overflow_lowers_the_scale_then_trains_with_finite_loss() -> None:
    """A mixed_float16 regression with targets in the hundreds: at 2**15 the scaled float16
    gradients overflow, so fit skips steps and halves the scale, one halving per skipped step,
    until the gradients fit; then the scale settles (the last epoch changes it at most once),
    and the loss stays finite and falls."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, 8)).astype(np.float32)
    targets = (features @ rng.normal(size=(8, 1)) * 100).astype(np.float32)
    with applied(RunConfig("mixed_float16")):
        keras.utils.set_random_seed(0)
        inputs = keras.Input(shape=(8,))
        hidden = keras.layers.Dense(16)(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1, dtype="float32")(hidden))
        model.compile(optimizer=keras.optimizers.SGD(3e-3), loss="mse", jit_compile=False)
        recorder = BatchLossScale()
        history = model.fit(
            features,
            targets,
            batch_size=32,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[recorder],
        )
        applied_steps = int(model.optimizer.iterations.numpy())
    trace = recorder.trace
    steps, steps_per_epoch = len(trace), 256 // 32
    assert steps == 3 * steps_per_epoch
    assert trace[0] == 2.0**14, "the very first step at 2**15 must overflow"
    assert all(math.log2(scale).is_integer() for scale in trace)
    assert all(after in (before, before / 2) for before, after in itertools.pairwise(trace))
    halvings = int(math.log2(2.0**15 / trace[-1]))
    assert halvings >= 4
    assert applied_steps == steps - halvings, "each halving is one skipped step"
    # Settled: at most one more halving in the last epoch (TensorFlow: none in these 3 epochs;
    # JAX: one, at step 24, where its float16 rounding lands a gradient just over the range).
    assert len(set(trace[-steps_per_epoch:])) <= 2, "the scale settles in the last epoch"
    losses = history.history["loss"]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
