"""Models behind one signature: ``build_model(name, image_size, num_classes, weights)``.

Every model ends in a ``Dense(num_classes, softmax)`` head that computes in float32, because a
float16 softmax can flush small probabilities to zero and make the cross-entropy infinite.
Layers are built under the global dtype policy in force, so build them inside
:func:`mpcore.modes.applied`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import keras

from mpcore.probe.backend import tf

#: The file name Keras caches the ImageNet ResNet50 "notop" weights under.
RESNET50_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


class WeightsError(ValueError):
    """Weights were asked for that cannot be loaded (missing, unreadable or mismatched)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the harness needs to know about a model besides its layers."""

    name: str
    default_image_size: int
    min_image_size: int
    preprocess: Callable[[tf.Tensor], tf.Tensor]
    build: Callable[[int, int, bool], keras.Model]


def _resnet50_preprocess(images: tf.Tensor) -> tf.Tensor:
    """Caffe-style ResNet50 preprocessing (RGB->BGR, ImageNet mean subtraction) in float32."""
    return keras.applications.resnet50.preprocess_input(tf.cast(images, tf.float32))


def _unit_preprocess(images: tf.Tensor) -> tf.Tensor:
    """Scale 0..255 pixels to 0..1 in float32."""
    return tf.cast(images, tf.float32) / 255.0


def _softmax_head(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    return keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)


def _build_resnet50(image_size: int, num_classes: int, float16_input: bool) -> keras.Model:
    inputs = keras.Input(
        shape=(image_size, image_size, 3), dtype="float16" if float16_input else "float32"
    )
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    return keras.Model(inputs, _softmax_head(x, num_classes), name="resnet50_transfer")


def _build_small(image_size: int, num_classes: int, float16_input: bool) -> keras.Model:
    """A compact CNN for CPU work; every filter/unit count is a multiple of 8 (tensor cores)."""
    inputs = keras.Input(
        shape=(image_size, image_size, 3), dtype="float16" if float16_input else "float32"
    )
    x = inputs
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(inputs, _softmax_head(x, num_classes), name="small_cnn")


MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec("resnet50", 224, 32, _resnet50_preprocess, _build_resnet50),
    "small": ModelSpec("small", 64, 8, _unit_preprocess, _build_small),
}


def model_spec(name: str) -> ModelSpec:
    """Return the spec of model ``name``, or raise ``ValueError`` listing the valid names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}") from None


def keras_cache_dir() -> Path:
    """Where Keras caches downloaded files (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _resolve_imagenet(name: str) -> Path:
    if name != "resnet50":
        raise WeightsError(f"no ImageNet weights exist for model {name!r}")
    cached = keras_cache_dir() / RESNET50_NOTOP_FILE
    if not cached.is_file():
        raise WeightsError(
            f"ImageNet weights are not in the local Keras cache ({cached}) and mpbench never "
            f"downloads; copy {RESNET50_NOTOP_FILE} there, or pass --weights FILE"
        )
    return cached


def _load_weights(model: keras.Model, name: str, path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.name.endswith(".weights.h5") or path.suffix == ".keras":
            # A full mpbench model saved with model.save_weights / model.save.
            if path.suffix == ".keras":
                model.set_weights(keras.saving.load_model(path, compile=False).get_weights())
            else:
                model.load_weights(path)
        else:
            # A Keras-applications style "notop" file for the backbone (by layer name).
            backbone = keras.Model(model.inputs, model.get_layer("avg_pool").input)
            backbone.load_weights(path)
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"cannot load weights {path} into {name}: {first}") from None


def build_model(
    name: str,
    image_size: int | None = None,
    num_classes: int = 5,
    weights: str | os.PathLike[str] | None = None,
    float16_input: bool = False,
) -> keras.Model:
    """Build model ``name`` under the current dtype policy.

    ``weights`` is None (random), ``"imagenet"`` (only from the local Keras cache; nothing is
    downloaded) or a local file: ``*.weights.h5``/``*.keras`` for a whole model, or a backbone
    "notop" ``.h5`` file. ``float16_input`` gives the model a float16 input layer, as in the seed.
    """
    spec = model_spec(name)
    size = spec.default_image_size if image_size is None else int(image_size)
    if size < spec.min_image_size:
        raise ValueError(
            f"image size {size} is too small for model {name!r} (minimum {spec.min_image_size})"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    model = spec.build(size, num_classes, float16_input)
    if weights is not None:
        path = _resolve_imagenet(name) if str(weights) == "imagenet" else Path(weights)
        _load_weights(model, name, path)
    return model


def multiple_of_8_layers(
    model: keras.Model, attributes: tuple[str, ...] = ("units", "filters")
) -> list[tuple[keras.layers.Layer, str, int]]:
    """``(layer, attribute, value)`` for every layer whose integer ``attribute`` is not a
    multiple of 8; the attribute ``input_channels`` is the fan-in channels of a Dense or Conv
    kernel (its second-last dimension)."""
    findings = []
    for layer in model.layers:
        for attribute in attributes:
            if attribute == "input_channels":
                kernel = getattr(layer, "kernel", None)
                value = (
                    int(kernel.shape[-2]) if kernel is not None and len(kernel.shape) > 1 else None
                )
            else:
                value = getattr(layer, attribute, None)
            if isinstance(value, int) and value % 8:
                findings.append((layer, attribute, value))
    return findings


def multiple_of_8_report(model: keras.Model) -> list[str]:
    """Layers whose units/filters are not multiples of 8 (they miss tensor-core kernels)."""
    return [
        f"{layer.name}: {attribute}={value}"
        for layer, attribute, value in multiple_of_8_layers(model)
    ]
