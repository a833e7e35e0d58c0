"""Models and data for the own-model tests, importable as ``own_models:NAME`` specs once this
folder is on ``sys.path`` (the tests prepend it, and put it on ``PYTHONPATH`` for children)."""

from __future__ import annotations

import keras
import numpy as np


def mobile_up(image_size: int = 16, num_classes: int = 5) -> keras.Model:
    """A MobileNet-like block (depthwise 3x3, pointwise 1x1) and an UpSampling2D decoder block,
    then a softmax classifier: the layer kinds whose half-precision kernels are known to be slow
    on some GPUs (tensorflow#41715)."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="depthwise_bn")(x)
    x = keras.layers.ReLU(name="depthwise_relu")(x)
    x = keras.layers.Conv2D(16, 1, name="pointwise")(x)
    x = keras.layers.UpSampling2D(2, name="upsample")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="decoder")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="mobile_up")


def tabular() -> keras.Model:
    """A model whose input is not an image (12 features, 3 classes)."""
    inputs = keras.Input((12,))
    x = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="tabular")


def tabular_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((40, 12)).astype("float32"), rng.integers(0, 3, 40)


def raises() -> keras.Model:
    raise RuntimeError("the factory broke")


def not_a_model() -> str:
    return "a string"
