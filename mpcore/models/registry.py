"""Models behind one signature: ``build_model(name, image_size, num_classes, weights)``.

Every model ends in a ``Dense(num_classes, softmax)`` head that computes in float32, because a
float16 softmax can flush small probabilities to zero and make the cross-entropy infinite.
Layers are built under the global dtype policy in force, so build them inside
:func:`mpcore.precision.modes.applied`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

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
    #: Whether it has Dense/EinsumDense layers besides its head, i.e. anything ``float8``
    #: quantizes (pinned against the built model by tests/test_fp8.py).
    float8_layers: bool = False


def _float32(images: Any) -> Any:
    """``images`` as float32: a numpy batch (the backend-neutral input path) stays numpy."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32, copy=False)
    return tf.cast(images, tf.float32)


def _resnet50_preprocess(images: tf.Tensor) -> tf.Tensor:
    """Caffe-style ResNet50 preprocessing (RGB->BGR, ImageNet mean subtraction) in float32."""
    return keras.applications.resnet50.preprocess_input(_float32(images))


def _unit_preprocess(images: tf.Tensor) -> tf.Tensor:
    """Scale 0..255 pixels to 0..1 in float32."""
    return _float32(images) / np.float32(255.0)


def _signed_unit_preprocess(images: tf.Tensor) -> tf.Tensor:
    """Scale 0..255 pixels to -1..1 in float32. Zero-centred pixels matter to vit_tiny: with
    0..1 it sat at chance (20%) for two or three epochs on the generated set, with -1..1 it
    passes 85% in the third."""
    return _float32(images) / np.float32(127.5) - np.float32(1.0)


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


#: vit_tiny's shape: 8 px patches embedded in 64 dimensions, 3 pre-norm blocks of 4 attention
#: heads of 16 dimensions and a 128-unit MLP. Every width is a multiple of 16 (FP8 and bf16 GEMMs).
VIT_PATCH, VIT_DIM, VIT_DEPTH, VIT_HEADS, VIT_MLP = 8, 64, 3, 4, 128


@keras.saving.register_keras_serializable(package="mpcore")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector to each token position (ViT's position embedding)."""

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.embedding = self.add_weight(
            name="embedding",
            shape=tuple(input_shape[1:]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, tokens: tf.Tensor) -> tf.Tensor:
        return tokens + keras.ops.cast(self.embedding, tokens.dtype)


def _build_vit_tiny(image_size: int, num_classes: int, float16_input: bool) -> keras.Model:
    """A small vision transformer (Dosovitskiy et al., ICLR 2021) whose matmuls are all
    ``Dense``/``EinsumDense`` layers, the ones Keras quantizes to FP8: the patch embedding is a
    Dense on flattened patches (equivalent to a stride-8 convolution), and ``MultiHeadAttention``
    is built from EinsumDense projections. Pre-norm blocks, mean pooling over the tokens."""
    inputs = keras.Input(
        shape=(image_size, image_size, 3), dtype="float16" if float16_input else "float32"
    )
    grid = image_size // VIT_PATCH
    x = inputs
    if grid * VIT_PATCH != image_size:  # drop the border that does not fill a whole patch
        x = keras.layers.CenterCrop(grid * VIT_PATCH, grid * VIT_PATCH)(x)
    # (H, W, 3) -> (rows, 8, cols, 8*3) -> (rows, cols, 8, 8*3) -> (patches, 8*8*3)
    x = keras.layers.Reshape((grid, VIT_PATCH, grid, VIT_PATCH * 3))(x)
    x = keras.layers.Permute((1, 3, 2, 4))(x)
    x = keras.layers.Reshape((grid * grid, VIT_PATCH * VIT_PATCH * 3))(x)
    x = keras.layers.Dense(VIT_DIM, name="patch_embedding")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    for block in range(VIT_DEPTH):
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_norm1")(x)
        y = keras.layers.MultiHeadAttention(
            VIT_HEADS, VIT_DIM // VIT_HEADS, name=f"block{block}_attention"
        )(y, y)
        x = keras.layers.Add(name=f"block{block}_add1")([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_norm2")(x)
        y = keras.layers.Dense(VIT_MLP, activation="gelu", name=f"block{block}_mlp1")(y)
        y = keras.layers.Dense(VIT_DIM, name=f"block{block}_mlp2")(y)
        x = keras.layers.Add(name=f"block{block}_add2")([x, y])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
    x = keras.layers.GlobalAveragePooling1D(name="token_pool")(x)
    return keras.Model(inputs, _softmax_head(x, num_classes), name="vit_tiny")


MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec("resnet50", 224, 32, _resnet50_preprocess, _build_resnet50),
    "small": ModelSpec("small", 64, 8, _unit_preprocess, _build_small, float8_layers=True),
    "vit_tiny": ModelSpec(
        "vit_tiny", 48, VIT_PATCH, _signed_unit_preprocess, _build_vit_tiny, float8_layers=True
    ),
}


def model_spec(name: str) -> ModelSpec:
    """Return the spec of model ``name``, or raise ``ValueError`` listing the valid names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid: {', '.join(MODELS)}, or your own model as a "
            ".keras file or package.module:factory"
        ) from None


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


#: The first bytes of the files weights can come from: HDF5 (``.h5``) and zip (``.keras``).
WEIGHTS_MAGIC = (b"\x89HDF\r\n\x1a\n", b"PK\x03\x04")


def _first_sentence(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return re.split(r"(?<=[.:])\s+(?:Example|This usually|Existing)", line)[0].rstrip(".: ")


def _load_weights(model: keras.Model, name: str, path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head.startswith(WEIGHTS_MAGIC):
        raise WeightsError(
            f"{path} is not a Keras weights file (neither HDF5 *.h5 / *.weights.h5 nor *.keras)"
        )
    whole = path.name.endswith(".weights.h5") or path.suffix == ".keras"
    layer_names = {layer.name for layer in model.layers}
    if not whole and "avg_pool" not in layer_names:
        raise WeightsError(
            f"model {name} takes whole-model weights (*.weights.h5 or *.keras), "
            f"not a backbone file such as {path.name}"
        )
    # Weights of another architecture make Keras warn once per layer it skips, then fail with
    # a message cut at a colon: both are summed up in the one error line instead.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if whole:
                # A full mpbench model saved with model.save_weights / model.save.
                if path.suffix == ".keras":
                    saved = keras.saving.load_model(path, compile=False)
                    model.set_weights(saved.get_weights())
                else:
                    model.load_weights(path)
            else:
                # A Keras-applications style "notop" file for the backbone (by layer name).
                backbone = keras.Model(model.inputs, model.get_layer("avg_pool").input)
                backbone.load_weights(path)
        except (OSError, ValueError, KeyError) as error:
            problem = _first_sentence(str(error)) or type(error).__name__
            told = [w for w in caught if w.category is UserWarning and "keras" in w.filename]
            if told:
                problem += (
                    f"; Keras warned {len(told)} time(s), first: "
                    f"{_first_sentence(str(told[0].message))}"
                )
            raise WeightsError(
                f"cannot load weights {path} into {name} (saved from another architecture?): "
                f"{problem}"
            ) from None


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
