"""A zoo of the model shapes users bring, as ``zoo_models:NAME`` factory specs (this folder is put
on ``sys.path`` by ``conftest.py``): subclassed, Lambda, text (Embedding + LSTM/GRU, a small
attention transformer), several inputs or outputs, dict outputs, fully convolutional, logits,
sigmoid, multi-label and regression heads, nested models, shared layers and Keras Applications
builders (``weights=None``). Every factory is small (32 px images, 12-token sequences, few
classes) so that the commands run in seconds on a CPU.

:data:`ZOO` holds each factory's metadata: what the commands should give (an answer, or a refusal
whose one line contains ``refusal``), whether it is heavy (the Applications: the slow tests),
whether it has a Dense layer besides its head (float8 has something to quantize) and its data
function for ``mpbench run --model`` (``zoo_models:data_NAME``, arrays shaped by the model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

SIDE = 32
CLASSES = 5
TOKENS = 12
VOCABULARY = 50


def _image(side: int = SIDE) -> keras.KerasTensor:
    return keras.Input((side, side, 3), name="image")


def _trunk(x: keras.KerasTensor) -> keras.KerasTensor:
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(x)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


# ---------------------------------------------------------------------------------------------
# Subclassed


@keras.saving.register_keras_serializable("zoo")
class SubCNN(keras.Model):
    """The most common way to write a Keras model: layers in ``__init__``, the graph in ``call``."""

    def __init__(self, num_classes: int = CLASSES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.hidden = keras.layers.Dense(16, activation="relu", name="hidden")
        self.probs = keras.layers.Dense(num_classes, activation="softmax", name="probs")

    def call(self, inputs, training=None):
        return self.probs(self.hidden(self.pool(self.conv(inputs))))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}


def subclassed(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """A subclassed CNN, built by calling it on a batch."""
    model = SubCNN(num_classes, name="subclassed")
    model(np.zeros((1, image_size, image_size, 3), "float32"))
    return model


def subclassed_unbuilt(num_classes: int = CLASSES) -> keras.Model:
    """A subclassed CNN never called nor built: nothing says what it takes."""
    return SubCNN(num_classes, name="subclassed_unbuilt")


class Opaque(keras.Model):
    """A subclassed model whose constructor takes a function: Keras cannot rebuild it from a
    config, so only its factory can make it again under another policy."""

    def __init__(self, activation: Callable, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation=activation, name="hidden")
        self.probs = keras.layers.Dense(CLASSES, activation="softmax", name="probs")

    def call(self, inputs):
        return self.probs(self.hidden(inputs))


def opaque() -> keras.Model:
    """:class:`Opaque` on 6 features, built: as a factory spec it converts (called again)."""
    model = Opaque(lambda t: keras.ops.maximum(t, 0.0), name="opaque")
    model(np.zeros((1, 6), "float32"))
    return model


class Scale(keras.layers.Layer):
    """A custom layer whose get_config() leaves out its constructor's argument: Keras cannot
    rebuild it from its config, so the model cannot be cloned under another policy."""

    def __init__(self, factor: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self) -> dict:
        return super().get_config()  # without "factor": from_config cannot call __init__


def unconvertible(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    inputs = _image(image_size)
    x = Scale(0.5, name="scale")(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(_trunk(x))
    return keras.Model(inputs, outputs, name="unconvertible")


def functional_twin(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """:class:`SubCNN`'s architecture written as a Functional model (same layer names)."""
    inputs = _image(image_size)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(_trunk(inputs))
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="functional_twin")


# ---------------------------------------------------------------------------------------------
# Functional oddities


def with_lambda(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """A Lambda layer (scaling the input): Keras's safe mode refuses to rebuild it from config."""
    inputs = _image(image_size)
    x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0, name="scale")(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(_trunk(x))
    return keras.Model(inputs, outputs, name="with_lambda")


def fully_convolutional(num_classes: int = CLASSES) -> keras.Model:
    """Input ``(None, None, 3)``: any image size; a global pool before the head."""
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="fully_convolutional")


def multi_input(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """An image and 6 tabular features."""
    image, features = _image(image_size), keras.Input((6,), name="features")
    x = keras.layers.Concatenate(name="join")([_trunk(image), features])
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model([image, features], outputs, name="multi_input")


def multi_output(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """A class head and a box-regression head, compiled with a loss per output."""
    inputs = _image(image_size)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(_trunk(inputs))
    classes = keras.layers.Dense(num_classes, activation="softmax", name="classes")(x)
    box = keras.layers.Dense(4, name="box")(x)
    model = keras.Model(inputs, [classes, box], name="multi_output")
    model.compile("adam", loss=["sparse_categorical_crossentropy", "mse"])
    return model


def dict_outputs(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """Outputs as a dict (names to tensors), uncompiled."""
    inputs = _image(image_size)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(_trunk(inputs))
    return keras.Model(
        inputs,
        {
            "label": keras.layers.Dense(num_classes, activation="softmax", name="label")(x),
            "score": keras.layers.Dense(1, activation="sigmoid", name="score")(x),
        },
        name="dict_outputs",
    )


def nested(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """A Sequential backbone used as one layer of a Functional model."""
    backbone = keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
        ],
        name="backbone",
    )
    inputs = _image(image_size)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(backbone(inputs))
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="nested")


def shared_layers(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """One Dense layer applied to two branches (a siamese block): it has no single output."""
    inputs = _image(image_size)
    left = _trunk(inputs)
    right = keras.layers.GlobalMaxPooling2D(name="max")(inputs)
    right = keras.layers.Dense(8, name="widen")(right)
    shared = keras.layers.Dense(16, activation="relu", name="shared")
    x = keras.layers.Add(name="add")([shared(left), shared(right)])
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="shared_layers")


# ---------------------------------------------------------------------------------------------
# Heads


def logits_head(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """No activation on the head, compiled with ``from_logits=True``."""
    inputs = _image(image_size)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(_trunk(inputs))
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name="logits_head")
    model.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def logits_uncompiled(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """A logits head nobody compiled: the loss has to be guessed from the head."""
    inputs = _image(image_size)
    outputs = keras.layers.Dense(num_classes, name="logits")(_trunk(inputs))
    return keras.Model(inputs, outputs, name="logits_uncompiled")


def binary_head(image_size: int = SIDE) -> keras.Model:
    """One sigmoid unit: a yes/no classifier."""
    inputs = _image(image_size)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(_trunk(inputs))
    outputs = keras.layers.Dense(1, activation="sigmoid", name="yes")(x)
    return keras.Model(inputs, outputs, name="binary_head")


def multi_label(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """Several sigmoid units (tags), compiled with binary cross-entropy."""
    inputs = _image(image_size)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(_trunk(inputs))
    outputs = keras.layers.Dense(num_classes, activation="sigmoid", name="tags")(x)
    model = keras.Model(inputs, outputs, name="multi_label")
    model.compile("adam", loss="binary_crossentropy")
    return model


def regression(image_size: int = SIDE) -> keras.Model:
    """A linear head of 2 values, compiled with MSE."""
    inputs = _image(image_size)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(_trunk(inputs))
    outputs = keras.layers.Dense(2, name="values")(x)
    model = keras.Model(inputs, outputs, name="regression")
    model.compile("adam", loss="mse")
    return model


# ---------------------------------------------------------------------------------------------
# Text


def _tokens() -> keras.KerasTensor:
    return keras.Input((TOKENS,), dtype="int32", name="tokens")


def text_lstm(num_classes: int = CLASSES) -> keras.Model:
    """Embedding + LSTM classifier: Embedding gradients are IndexedSlices."""
    tokens = _tokens()
    x = keras.layers.Embedding(VOCABULARY, 16, name="embed")(tokens)
    x = keras.layers.LSTM(16, name="lstm")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(tokens, outputs, name="text_lstm")


def text_gru(num_classes: int = CLASSES) -> keras.Model:
    """Embedding + GRU (Sequential), dense hidden layer."""
    return keras.Sequential(
        [
            keras.Input((TOKENS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 16, name="embed"),
            keras.layers.GRU(16, name="gru"),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(num_classes, activation="softmax", name="probs"),
        ],
        name="text_gru",
    )


def transformer(num_classes: int = CLASSES) -> keras.Model:
    """One pre-norm encoder block: token embedding, self-attention, feed-forward, mean pool."""
    tokens = _tokens()
    x = keras.layers.Embedding(VOCABULARY, 16, name="embed")(tokens)
    attended = keras.layers.MultiHeadAttention(2, 8, name="attention")(
        keras.layers.LayerNormalization(name="norm1")(x),
        keras.layers.LayerNormalization(name="norm1b")(x),
    )
    x = keras.layers.Add(name="residual1")([x, attended])
    y = keras.layers.LayerNormalization(name="norm2")(x)
    y = keras.layers.Dense(32, activation="gelu", name="ffn1")(y)
    y = keras.layers.Dense(16, name="ffn2")(y)
    x = keras.layers.Add(name="residual2")([x, y])
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(tokens, outputs, name="transformer")


# ---------------------------------------------------------------------------------------------
# Keras Applications (random weights)


def _application(
    builder: Callable[..., keras.Model], image_size: int, num_classes: int, **options: Any
):
    return builder(
        weights=None,
        input_shape=(image_size, image_size, 3),
        classes=num_classes,
        pooling="avg",
        **options,
    )


def mobilenet(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    """MobileNet at its narrowest width: the Application with the fewest layers (91), so the one
    the default suite sends through every command (tracing time grows with the layer count)."""
    return _application(keras.applications.MobileNet, image_size, num_classes, alpha=0.25)


def mobilenet_v2(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    return _application(keras.applications.MobileNetV2, image_size, num_classes)


def efficientnet_b0(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    return _application(keras.applications.EfficientNetB0, image_size, num_classes)


def densenet121(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    return _application(keras.applications.DenseNet121, image_size, num_classes)


def convnext_tiny(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    return _application(keras.applications.ConvNeXtTiny, image_size, num_classes)


def resnet50_v2(image_size: int = SIDE, num_classes: int = CLASSES) -> keras.Model:
    return _application(keras.applications.ResNet50V2, image_size, num_classes)


# ---------------------------------------------------------------------------------------------
# Metadata


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the commands should make of a zoo factory."""

    factory: Callable[..., keras.Model]
    #: "answer", or the refusal's expected words
    expected: str = "answer"
    heavy: bool = False
    #: a Dense/EinsumDense layer besides the head: float8 has something to quantize
    dense: bool = True
    #: takes one square RGB image and outputs CLASSES values (trains on the ship set)
    ship_images: bool = True

    @property
    def refused(self) -> bool:
        return self.expected != "answer"


ZOO: dict[str, Entry] = {
    "subclassed": Entry(subclassed),
    "subclassed_unbuilt": Entry(subclassed_unbuilt, expected="the model is not built"),
    "opaque": Entry(opaque, ship_images=False),
    "unconvertible": Entry(unconvertible, expected="layer scale (Scale) cannot be rebuilt"),
    "functional_twin": Entry(functional_twin),
    "with_lambda": Entry(with_lambda, dense=False),
    "fully_convolutional": Entry(fully_convolutional, dense=False, ship_images=False),
    "multi_input": Entry(multi_input, ship_images=False),
    "multi_output": Entry(multi_output, ship_images=False),
    "dict_outputs": Entry(dict_outputs, ship_images=False),
    "nested": Entry(nested),
    "shared_layers": Entry(shared_layers),
    "logits_head": Entry(logits_head),
    "logits_uncompiled": Entry(logits_uncompiled, dense=False),
    "binary_head": Entry(binary_head, ship_images=False),
    "multi_label": Entry(multi_label, ship_images=False),
    "regression": Entry(regression, ship_images=False),
    "text_lstm": Entry(text_lstm, dense=False, ship_images=False),
    "text_gru": Entry(text_gru, ship_images=False),
    "transformer": Entry(transformer, ship_images=False),
    "mobilenet": Entry(mobilenet, heavy=True, dense=False),
    "mobilenet_v2": Entry(mobilenet_v2, heavy=True, dense=False),
    "efficientnet_b0": Entry(efficientnet_b0, heavy=True, dense=False),
    "densenet121": Entry(densenet121, heavy=True, dense=False),
    "convnext_tiny": Entry(convnext_tiny, heavy=True),
    "resnet50_v2": Entry(resnet50_v2, heavy=True, dense=False),
}

#: Samples of each ``data_NAME`` function (``run --model NAME --data zoo_models:data_NAME``).
DATA_SAMPLES = 24


def zoo_data(name: str, samples: int = DATA_SAMPLES, seed: int = 0) -> tuple:
    """Arrays that fit zoo model ``name``: inputs and labels for the loss its head calls for."""
    from mpcore.user.data import random_batch, resolve_loss

    model = ZOO[name].factory()
    loss, _ = resolve_loss(model, None)
    return random_batch(model, samples, loss, seed)


def _data_function(name: str) -> Callable[[], tuple]:
    def data() -> tuple:
        return zoo_data(name)

    data.__name__ = f"data_{name}"
    return data


for _name in ZOO:
    globals()[f"data_{_name}"] = _data_function(_name)


def legacy_h5(path: str, name: str = "functional_twin") -> str:
    """Save zoo model ``name`` compiled with a sparse loss as a legacy full-model ``.h5``."""
    model = ZOO[name].factory()
    model.compile("adam", loss="sparse_categorical_crossentropy")
    model.save(path)
    return path


def random_images(samples: int = 4, side: int = SIDE) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((samples, side, side, 3)).astype("float32")
