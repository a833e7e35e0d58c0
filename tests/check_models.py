"""Purpose-built models and data for the ``mpbench check`` tests, importable as
``check_models:NAME`` specs (tests/conftest.py puts tests/ on sys.path). Each model provokes one
finding."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

#: Inputs in [1, 2] times 1e5 are beyond float16's 65504 (and within bfloat16's range).
SCALE_UP = 1e5


def softmax_head(num_classes: int = 8) -> keras.Model:
    """A classifier whose final softmax computes in the global policy's type (no float32 head)."""
    inputs = keras.Input((16,))
    x = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="softmax_head")


def wide_dense() -> keras.Model:
    """A Dense(100) between multiples of 8; its output also makes the head's input 100 wide."""
    inputs = keras.Input((64,))
    x = keras.layers.Dense(96, activation="relu", name="fits")(inputs)
    x = keras.layers.Dense(100, activation="relu", name="wide")(x)
    outputs = keras.layers.Dense(8, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="wide_dense")


def overflow_model(policy: str | None = None) -> keras.Model:
    """A scale-up by 1e5, pinned to float32 as input scaling often is, before a Dense layer that
    computes in the global policy's type. (Built under float32 and converted, the scale-up itself
    computes in float16, where the constant 1e5 is already inf.)"""
    inputs = keras.Input((8,))
    x = keras.layers.Rescaling(SCALE_UP, dtype="float32", name="scale_up")(inputs)
    x = keras.layers.Dense(16, kernel_initializer="ones", dtype=policy, name="after")(x)
    x = keras.layers.Rescaling(1 / SCALE_UP, dtype=policy, name="scale_down")(x)
    outputs = keras.layers.Dense(8, dtype="float32" if policy else None, name="head")(x)
    return keras.Model(inputs, outputs, name="overflow_model")


def overflow_model_float16() -> keras.Model:
    """:func:`overflow_model` with its layers' policies given (a factory cannot rely on the
    global policy), float32 head."""
    return overflow_model("mixed_float16")


def overflow_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 2.0, (8, 8)).astype(np.float32)
    return x, rng.standard_normal((8, 8)).astype(np.float32)


def overflow_dataset() -> tf.data.Dataset:
    """The same data as an unbatched-then-batched tf.data pipeline."""
    return tf.data.Dataset.from_tensor_slices(overflow_data()).batch(4)


def sized_factory(image_size: int = 16, num_classes: int = 3) -> keras.Model:
    """A factory that takes the loader's keywords (and nothing else)."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=f"sized_{image_size}_{num_classes}")


def not_a_model() -> int:
    return 42


def raising_factory() -> keras.Model:
    raise RuntimeError("no weights here")


class Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(8)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return self.dense(inputs)


def _numerics_helpers():
    """``numerics/helpers.py``, loaded from its file: under ``--import-mode=importlib`` (tox)
    the ``numerics`` package is not importable from ``tests/``, and the deep sigmoid stack must
    be the very model the numerics suite proves its loss-scaling claims on."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "numerics" / "helpers.py"
    spec = importlib.util.spec_from_file_location("mpbench_numerics_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stacked_sigmoid_model() -> keras.Model:
    """The numerics suite's deep sigmoid stack (gradients ~2**-32 at the first kernel)."""
    return _numerics_helpers().stacked_sigmoid_model()
