"""Models and measurements shared by the numerics tests."""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np

from mpcore.precision.modes import RunConfig, applied
from mpcore.probe import backend
from mpcore.probe.backend import tf
from mpcore.train.custom_step import make_train_step

#: Depth of the stacked-sigmoid model. With kernels of ones and input 1, each layer multiplies the
#: backward signal by sigmoid'(z) ~ 0.22, so the first kernel's gradient is ~2**-32: zero in
#: float16, representable (~2**-17) once multiplied by the default loss scale 2**15.
SIGMOID_DEPTH = 15
#: A learning rate large enough that a gradient of 2**-32 moves a weight of 1.0 visibly in float32.
HUGE_LEARNING_RATE = 2.0**30


def stacked_sigmoid_model(depth: int = SIGMOID_DEPTH) -> keras.Model:
    """``depth`` one-unit sigmoid Dense layers, kernels initialised to ones, biases to zeros."""
    inputs = keras.Input(shape=(1,))
    x = inputs
    for _ in range(depth):
        x = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(x)
    return keras.Model(inputs, x, name="stacked_sigmoid")


def squared_error(targets: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
    """Mean squared error computed in float32 whatever the prediction dtype."""
    return keras.ops.mean(keras.ops.square(keras.ops.cast(predictions, "float32") - targets))


def apply_gradients(
    optimizer: keras.optimizers.Optimizer, gradients: list, variables: list[keras.Variable]
) -> None:
    """``optimizer.apply(gradients, variables)``, on JAX through Keras's ``stateless_apply`` (as
    Keras's own JAX trainer does): an eager ``LossScaleOptimizer.apply`` on JAX leaks a tracer
    from its ``cond`` (Keras 3.15), while the stateless form is what ``fit`` runs there."""
    if backend.name() != "jax":
        optimizer.apply(gradients, variables)
        return
    trainable, state = optimizer.stateless_apply(
        [v.value for v in optimizer.variables], gradients, [v.value for v in variables]
    )
    for variable, value in zip(
        [*variables, *optimizer.variables], [*trainable, *state], strict=True
    ):
        variable.assign(value)


class StepOutcome(NamedTuple):
    """What one training step did to the first kernel, and whether the loss was scaled."""

    applied_gradient: float
    loss_scale_optimizer: bool


def first_kernel_step(precision: str, route: str, loss_scaling: bool) -> StepOutcome:
    """One SGD step of the stacked-sigmoid model on input 1, target 0: the first kernel's change
    divided by the learning rate (the gradient the optimizer applied), and whether the optimizer
    that ran was a ``LossScaleOptimizer``.

    ``route`` is ``"custom_step"`` (mpcore's ``make_train_step``, with a ``LossScaleOptimizer``
    when ``loss_scaling``; a ``tf.function``, so TensorFlow-only) or ``"compile"``
    (``compile(auto_scale_loss=loss_scaling)`` and ``train_on_batch``, on every backend).
    """
    inputs = np.ones((1, 1), np.float32)
    targets = np.zeros((1, 1), np.float32)
    with applied(RunConfig(precision)):
        model = stacked_sigmoid_model()
        kernel = model.layers[1].kernel
        before = kernel.numpy().item()
        optimizer: keras.optimizers.Optimizer = keras.optimizers.SGD(HUGE_LEARNING_RATE)
        if route == "custom_step":
            if loss_scaling:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            step = make_train_step(model, optimizer, squared_error)
            step(tf.constant(inputs), tf.constant(targets))
        elif route == "compile":
            model.compile(
                optimizer=optimizer,
                loss=squared_error,
                auto_scale_loss=loss_scaling,
                jit_compile=False,
            )
            model.train_on_batch(inputs, targets)
            optimizer = model.optimizer
        else:
            raise ValueError(f"unknown route {route!r}")
        return StepOutcome(
            (before - kernel.numpy().item()) / HUGE_LEARNING_RATE,
            isinstance(optimizer, keras.optimizers.LossScaleOptimizer),
        )
