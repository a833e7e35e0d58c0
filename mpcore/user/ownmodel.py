"""A user's model where the registry's models go: training, benchmarks and ``mpbench run``.

A model name that is not in the registry (:data:`mpcore.models.registry.MODELS`) is a user's model
spec: a ``.keras`` file or ``package.module:factory`` (:mod:`mpcore.user.loader`). Each precision
mode gets its own copy: the model is loaded under float32 (fresh from the factory or the file) and,
for a half-precision mode, converted with :func:`mpcore.user.loader.convert` (weights copied,
float32 head), since a model built under one policy keeps it. Image models train on the ship set (5
classes, pixels scaled to 0..1); any model can train on arrays (:class:`ArraySplit`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras
import numpy as np

from mpcore.data.arrays import EpochOrder
from mpcore.data.ships import NUM_CLASSES
from mpcore.models.registry import MODELS
from mpcore.precision.modes import KERAS_POLICY, RunConfig, applied, check_model
from mpcore.probe.backend import tf
from mpcore.user.loader import (
    LoadedModel,
    LoadError,
    convert,
    head_layers,
    load_model,
    model_precision,
)

#: The most samples ``mpbench run`` takes from ``--data`` arrays (a function with a
#: ``batch_size`` parameter is asked for this many).
MAX_SAMPLES = 10_000


def is_user_model(name: str) -> bool:
    """Whether ``name`` is a user's model spec (``package.module:factory``, a ``.keras``/``.h5``
    file) rather than a registry name; any other name is a registry name, known or not."""
    from mpcore.user.loader import is_python_spec

    if name in MODELS:
        return False
    return is_python_spec(name) or os.path.splitext(name)[1] in (".keras", ".h5")


def image_side(model: keras.Model) -> int | None:
    """The side of the model's one square RGB image input, or None if it takes something else."""
    shapes = [tuple(tensor.shape[1:]) for tensor in model.inputs]
    if len(shapes) != 1 or len(shapes[0]) != 3:
        return None
    height, width, channels = shapes[0]
    return int(height) if height and height == width and channels == 3 else None


def output_classes(model: keras.Model) -> int | None:
    """The width of the model's one output's last axis, or None for several outputs."""
    outputs = model.outputs
    return int(outputs[0].shape[-1]) if len(outputs) == 1 and outputs[0].shape[-1] else None


def preprocess_pixels(images: tf.Tensor) -> tf.Tensor:
    """Ship images for a user's model: pixels scaled to 0..1 (its own preprocessing belongs in
    the model), as ``mpbench check --data DIR`` gives them."""
    return images / 255.0


def load_float32(source: str, image_size: int | None = None) -> LoadedModel:
    """Load ``source`` under the float32 policy; an image model's factory is offered
    ``image_size`` and the ship set's ``num_classes``. Raises :class:`LoadError`."""
    keywords = {"image_size": image_size, "num_classes": NUM_CLASSES} if image_size else {}
    # applied() restores the caller's globals (policy, XLA flags) afterwards.
    with applied(RunConfig("float32", "off")):
        return load_model(source, compile=False, **keywords)


def under_precision(loaded: LoadedModel, precision: str) -> keras.Model:
    """The loaded model as it runs under ``precision``: itself for a float32 model in a float32
    mode, else :func:`mpcore.user.loader.convert`'s clone (float32 head), uncompiled."""
    if KERAS_POLICY[precision] == "float32" and model_precision(loaded.model) == "float32":
        return loaded.model
    return convert(loaded.model, precision, compile=False)


def build_user_model(config: RunConfig, source: str, image_size: int | None) -> keras.Model:
    """A fresh copy of the user's model for ``config``; call inside :func:`applied`."""
    return under_precision(load_float32(source, image_size), config.precision)


def user_loss(model: keras.Model) -> tuple[Any, list[str]]:
    """The loss to train with (chosen from the head, see :func:`mpcore.user.data.resolve_loss`)
    and the metrics: accuracy for a cross-entropy loss, none otherwise."""
    from mpcore.user.data import resolve_loss

    loss, label = resolve_loss(model, None)
    return loss, (["accuracy"] if "crossentropy" in label else [])


def verify(model: keras.Model, config: RunConfig) -> bool:
    """:func:`mpcore.precision.modes.check_model` where it applies (the model's one head is its last
    layer, the layout the check expects); return whether it was checked."""
    layers = model.layers
    if not layers or head_layers(model) != [layers[-1]]:
        return False
    check_model(model, config)
    return True


def is_array_data(spec: str | None) -> bool:
    """Whether ``--data`` names arrays (``.npz`` or ``package.module:fn``), not ship images."""
    from mpcore.user.loader import is_python_spec

    return bool(spec) and (is_python_spec(spec) or os.fspath(spec).endswith(".npz"))


@dataclasses.dataclass
class ArraySplit:
    """One split of a user's arrays, standing in for a :class:`mpcore.data.ships.ShipIndex`."""

    x: Any
    y: Any

    def __len__(self) -> int:
        return int(np.shape(keras.tree.flatten(self.x)[0])[0])

    def class_counts(self) -> list[int]:
        labels = np.asarray(keras.tree.flatten(self.y)[0])
        if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0:
            return np.bincount(labels).tolist()
        return []

    def dataset(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = False,
        order: EpochOrder | None = None,
    ) -> tf.data.Dataset:
        """The tf.data pipeline, each epoch in ``order``'s permutation (the one the
        backend-neutral path, :class:`mpcore.data.arrays.ImageBatches`, uses)."""
        order = order or EpochOrder(len(self), seed, shuffle)
        if not order.shuffle:
            data = tf.data.Dataset.from_tensor_slices((self.x, self.y))
        else:
            arrays = keras.tree.map_structure(tf.convert_to_tensor, (self.x, self.y))
            data = (
                tf.data.Dataset.from_generator(
                    lambda: iter([order.next_pass()]),
                    output_signature=tf.TensorSpec([order.n], tf.int64),
                )
                .unbatch()
                .map(lambda i: keras.tree.map_structure(lambda a: tf.gather(a, i), arrays))
            )
        return data.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def array_splits(
    spec: str, model: keras.Model, validation_fraction: float, seed: int
) -> tuple[ArraySplit, ArraySplit]:
    """All of ``spec``'s arrays, checked against ``model``, split at random (seeded) into
    training and validation. Raises :class:`LoadError`. At most :data:`MAX_SAMPLES`; a function
    returning a ``tf.data.Dataset`` gives its first element."""
    from mpcore.user.data import load_batch, resolve_loss

    _, label = resolve_loss(model, None)
    x, y = load_batch(spec, model, MAX_SAMPLES, label, seed)
    total = len(ArraySplit(x, y))
    held_out = max(1, round(total * validation_fraction))
    if total - held_out < 1:
        raise LoadError(f"{spec}: {total} sample(s) cannot be split into training and validation")
    order = np.random.default_rng(seed).permutation(total)

    def take(indices: np.ndarray) -> ArraySplit:
        return ArraySplit(*keras.tree.map_structure(lambda a: np.asarray(a)[indices], (x, y)))

    return take(order[held_out:]), take(order[:held_out])
