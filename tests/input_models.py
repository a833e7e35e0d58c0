"""Factories that misbehave the ways users' factories do, importable as ``input_models:NAME``
(tests/conftest.py puts tests/ on sys.path), and a tiny well-behaved one to judge data with."""

from __future__ import annotations

import sys

import keras


def tiny(num_classes: int = 3, image_size: int = 8) -> keras.Model:
    """A small image classifier (softmax head, ``num_classes`` classes)."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


def exits() -> keras.Model:
    sys.exit(3)


def chatty() -> keras.Model:
    """Prints, and prints the model's summary, as notebooks' factories do."""
    model = tiny()
    print("building the tiny model")
    model.summary()
    return model


def raises() -> keras.Model:
    raise RuntimeError("no weights here")


def heavy_head() -> keras.Model:
    """A float32 Dense model whose softmax head holds about 13% of the FLOPs."""
    inputs = keras.Input((64,))
    x = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="heavy_head")


def scale_16() -> keras.Model:
    """:func:`heavy_head` compiled with the user's own ``LossScaleOptimizer(initial_scale=16)``."""
    model = heavy_head()
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(), initial_scale=16)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


@keras.saving.register_keras_serializable(package="input_models")
def huge_loss(y, p):
    """A loss 1e30 times the mean squared error: every float16 gradient overflows. (Registered,
    as Keras wants a custom loss of a model that is cloned.)"""
    return 1e30 * keras.ops.mean(keras.ops.square(y - p))


def collapsing() -> keras.Model:
    """A regression model compiled with :func:`huge_loss`: under mixed_float16 every training
    step overflows, so dynamic loss scaling halves its scale at every step."""
    inputs = keras.Input((16,))
    x = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(8, name="head")(x)
    model = keras.Model(inputs, outputs, name="collapsing")
    model.compile(optimizer="sgd", loss=huge_loss)
    return model


def built_in_float16() -> keras.Model:
    """:func:`heavy_head` built under mixed_float16 (its head in float32), compiled."""
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = heavy_head()
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def cancelling() -> keras.Model:
    """``lift`` adds 4000 and ``drop`` takes it away again: in float16 (spacing 4 near 4000)
    ``drop``'s output loses nearly everything, and every layer after it inherits that."""
    inputs = keras.Input((16,))
    x = keras.layers.Rescaling(1.0, offset=4000.0, name="lift")(inputs)
    x = keras.layers.Rescaling(1.0, offset=-4000.0, name="drop")(x)
    x = keras.layers.Dense(16, name="after")(x)
    outputs = keras.layers.Dense(8, name="head")(x)
    return keras.Model(inputs, outputs, name="cancelling")
