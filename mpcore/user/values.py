"""The values of a user's batch, checked before anything is computed on them.

A NaN in the data or a class index the model has no output for makes every later number of a
check meaningless (a NaN loss blamed on the precision, or a TensorFlow error deep in the loss), so
:func:`check_values` refuses them in one :class:`mpcore.user.loader.LoadError` naming the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from mpcore.user.loader import LoadError


def _nonfinite(array: np.ndarray) -> int:
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def check_values(
    source: str, model: keras.Model, x: Any, y: Any, loss_name: str | Sequence[str]
) -> None:
    """Refuse ``(x, y)`` from ``source`` when an input or label holds inf/NaN, or when a sparse
    loss's labels are not class indices of the model's output (``0..classes-1``). ``loss_name``
    is one loss for every output, or one per output (a multi-output model's compiled losses)."""
    for role, part in (("x", x), ("y", y)):
        for array in (np.asarray(a) for a in keras.tree.flatten(part)):
            bad = _nonfinite(array)
            if bad:
                raise LoadError(
                    f"{source}: {role} holds {bad:,} NaN/inf value{'s' if bad != 1 else ''} of "
                    f"{array.size:,}: clean the data (a check on it would judge nothing)"
                )
    outputs = _outputs(model)
    if outputs is None:
        return
    names = [loss_name] if isinstance(loss_name, str) else list(loss_name)
    if len(names) == 1:
        names *= len(outputs)
    if len(names) != len(outputs):  # losses not one per output: which label goes where is unknown
        return
    labels = [np.asarray(a) for a in keras.tree.flatten(y)]
    for array, output, name in zip(labels, outputs, names, strict=False):
        _check_label_shape(source, array, output, name)
    for array, output, name in zip(labels, outputs, names, strict=False):
        if "sparse" in name:
            _check_class_indices(source, array, output, name)


def _outputs(model: keras.Model) -> list[Any] | None:
    """The model's outputs, flattened as the labels and the losses are (a dict by sorted key):
    the graph's, or for a subclassed model :class:`keras.KerasTensor` specs of its output
    shapes named after the layers that produce them (None where they cannot be inferred)."""
    try:
        return keras.tree.flatten(model.output)
    except (AttributeError, ValueError):  # no graph: infer them from a symbolic call
        pass
    from mpcore.user.loader import head_layers, output_shapes

    try:
        shapes = output_shapes(model)
    except LoadError:
        return None
    heads = head_layers(model)
    names = [layer.name for layer in heads] if len(heads) == len(shapes) else []
    return [
        keras.KerasTensor((None, *shape), name=names[i] if names else model.name)
        for i, shape in enumerate(shapes)
    ]


def _check_class_indices(source: str, array: np.ndarray, output: Any, loss_name: str) -> None:
    classes = output.shape[-1]
    if classes is not None and array.size:
        if not np.array_equal(array, np.round(array)):
            raise LoadError(
                f"{source}: labels are not whole numbers, but the loss ({loss_name}) takes "
                "class indices"
            )
        low, high = array.min(), array.max()
        head = _head_name(output)
        if low < 0 or high >= classes:
            raise LoadError(
                f"{source}: labels span {low:g}..{high:g}, but the model's output "
                f"{head!r} has {classes} classes (0..{classes - 1}): fix the labels or "
                f"build the model with {int(high) + 1} (a factory gets --num-classes)"
            )


#: Keras losses whose labels have the output's shape (sparse ones drop its last axis).
_SHAPED_LOSSES = ("crossentropy", "squared", "absolute", "hinge", "kl_divergence", "poisson")


def _head_name(output: Any) -> str:
    history = getattr(output, "_keras_history", None)
    return getattr(getattr(history, "operation", None), "name", None) or output.name


def _check_label_shape(source: str, labels: np.ndarray, output: Any, loss_name: str) -> None:
    """Labels must have the output's shape, less its last axis for a sparse loss (or with a last
    axis of 1); a custom loss is left to judge its own labels."""
    if not any(kind in loss_name for kind in _SHAPED_LOSSES):
        return
    want = tuple(output.shape[1:])
    got = tuple(labels.shape[1:])
    if "sparse" in loss_name:
        want = want[:-1]
    # Keras squeezes or expands a trailing axis of 1 to match ranks: (n,) fits (n, 1).
    if len(got) == len(want) + 1 and got[-1] == 1:
        got = got[:-1]
    elif len(want) == len(got) + 1 and want[-1] == 1:
        want = want[:-1]
    fits = len(got) == len(want) and all(w in (None, g) for g, w in zip(got, want, strict=True))
    if not fits:
        shown = tuple("?" if d is None else d for d in output.shape[1:])
        hint = (
            "; one-hot labels want categorical_crossentropy (--loss)"
            if "sparse" in loss_name
            else "; class indices want sparse_categorical_crossentropy (--loss)"
            if "categorical" in loss_name and len(got) + 1 == len(want)
            else ""
        )
        raise LoadError(
            f"{source}: labels of shape {got} per sample do not fit the output "
            f"{_head_name(output)!r} of shape {shown} under the loss {loss_name}{hint}"
        )
