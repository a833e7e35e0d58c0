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
    input_specs,
    load_model,
    model_precision,
    output_shapes,
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
    shapes = [shape for shape, _ in input_specs(model)]
    if len(shapes) != 1 or len(shapes[0]) != 3:
        return None
    height, width, channels = shapes[0]
    return int(height) if height and height == width and channels == 3 else None


def output_classes(model: keras.Model) -> int | None:
    """The width of the model's one output's last axis, or None for several outputs."""
    outputs = output_shapes(model)
    return int(outputs[0][-1]) if len(outputs) == 1 and outputs[0] and outputs[0][-1] else None


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
    mode, else :func:`mpcore.user.loader.convert`'s copy (float32 head), uncompiled."""
    if KERAS_POLICY[precision] == "float32" and model_precision(loaded.model) == "float32":
        return loaded.model
    return convert(loaded.model, precision, compile=False, remake=loaded.remake)


def build_user_model(
    config: RunConfig, source: str, image_size: int | None
) -> tuple[keras.Model, Any, list[str]]:
    """A fresh copy of the user's model for ``config``, with the loss and metrics to train it
    with (from the model as the user gave it: its compiled loss, else chosen from its heads;
    an image model's labels are class indices). Call inside :func:`applied`."""
    loaded = load_float32(source, image_size)
    loss, metrics = user_loss(loaded.model, class_labels=image_size is not None)
    return under_precision(loaded, config.precision), loss, metrics


def user_loss(model: keras.Model, class_labels: bool = False) -> tuple[Any, list[str]]:
    """The loss to train with (see :func:`mpcore.user.data.resolve_loss`) and the metrics:
    accuracy for one cross-entropy loss, none otherwise."""
    from mpcore.user.data import loss_names, resolve_loss

    loss, _ = resolve_loss(model, None, class_labels)
    names = loss_names(loss)
    return loss, (["accuracy"] if len(names) == 1 and "crossentropy" in names[0] else [])


def verify(model: keras.Model, config: RunConfig) -> bool:
    """:func:`mpcore.precision.modes.check_model` with the model's heads (the layers producing
    its outputs, whatever their activation) as the float32 layers, where they are among its
    direct layers (not inside a nested model); return whether it was checked."""
    heads = head_layers(model)
    direct = {id(layer) for layer in model.layers}
    if not heads or any(id(head) not in direct for head in heads):
        return False
    check_model(model, config, heads)
    return True


def conversion_problem(
    loaded: LoadedModel, precisions: Any, float8_needs_layers: bool = True
) -> str | None:
    """Why ``loaded`` cannot run under one of ``precisions`` (one line), or None: each mode's
    copy is made as training makes it (and quantized for ``float8``), so that a model that
    cannot be converted is refused before the first configuration trains. Without
    ``float8_needs_layers`` a model with nothing for float8 to quantize passes (the benchmarks
    skip float8 for it)."""
    from mpcore.precision.fp8 import quantize_float8
    from mpcore.user.loader import first_line

    for precision in dict.fromkeys(precisions):
        skipped = precision == "float8" and not float8_needs_layers
        if skipped and not has_float8_layers(loaded.model):
            # A copy has the original's layers: with none to quantize float8 is skipped, and its
            # copy (a bfloat16 clone of the whole model) is not made for nothing.
            continue
        try:
            with applied(RunConfig(precision, "off")):
                model = under_precision(loaded, precision)
                if precision == "float8":
                    if not has_float8_layers(model):
                        return (
                            f"{loaded.source}: has no Dense or EinsumDense layer besides its "
                            "head, so float8 would change nothing"
                        )
                    quantize_float8(model)
        except LoadError as error:
            return str(error)
        except Exception as error:  # Keras's own errors while cloning or quantizing
            return f"{loaded.source}: cannot be converted to {precision} ({first_line(error)})"
    return None


def has_float8_layers(model: keras.Model) -> bool:
    """Whether ``model`` has a Dense or EinsumDense layer besides its heads: something for
    ``float8`` to quantize (the heads stay float32)."""
    from mpcore.precision.fp8 import float8_candidates

    heads = {id(layer) for layer in head_layers(model)}
    return any(id(layer) not in heads for layer in float8_candidates(model))


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
        # Tuples, not lists: tf.data would pack a list of inputs (or labels) into one tensor.
        structure = keras.tree.lists_to_tuples((self.x, self.y))
        if not order.shuffle:
            data = tf.data.Dataset.from_tensor_slices(structure)
        else:
            arrays = keras.tree.map_structure(tf.convert_to_tensor, structure)
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
    from mpcore.user.data import load_batch, loss_names, resolve_loss
    from mpcore.user.values import check_values

    loss, _ = resolve_loss(model, None)
    x, y = load_batch(spec, model, MAX_SAMPLES, loss, seed)
    # Labels that do not fit the loss (or NaN data) would fail every configuration late, in
    # its worker: refused here, before anything trains.
    check_values(spec, model, x, y, loss_names(loss))
    total = len(ArraySplit(x, y))
    held_out = max(1, round(total * validation_fraction))
    if total - held_out < 1:
        raise LoadError(f"{spec}: {total} sample(s) cannot be split into training and validation")
    order = np.random.default_rng(seed).permutation(total)

    def take(indices: np.ndarray) -> ArraySplit:
        return ArraySplit(*keras.tree.map_structure(lambda a: np.asarray(a)[indices], (x, y)))

    return take(order[held_out:]), take(order[:held_out])
