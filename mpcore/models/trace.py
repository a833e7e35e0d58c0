"""Each layer's outputs, recorded as a model's ``call()`` runs them: for any Keras model, a
subclassed one included (it has no graph of layer outputs to read them from).

A layer's ``call`` is wrapped for the duration of one forward pass; a layer called more than once
(a shared layer) has no single output and is left out. Only the model's direct layers are
recorded: a custom layer holding layers is one row, its inner layers are not isolated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras


@contextlib.contextmanager
def recording(
    model: keras.Model, arguments: dict[int, tuple] | None = None
) -> Iterator[list[tuple[keras.layers.Layer, Any]]]:
    """Record ``(layer, outputs)`` of the model's direct layers, in the order they run, while
    the block runs; after it, only the layers that ran exactly once are left in the list.
    ``arguments`` (if given) gets each layer's ``(args, kwargs)`` by ``id(layer)``."""
    calls: list[tuple[keras.layers.Layer, Any]] = []
    hooked: list[tuple[keras.layers.Layer, bool, Any]] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        own = layer.__dict__.get("call")
        original = layer.call

        def call(*args: Any, _original: Any = original, _layer: Any = layer, **kwargs: Any) -> Any:
            outputs = _original(*args, **kwargs)
            calls.append((_layer, outputs))
            if arguments is not None:
                arguments[id(_layer)] = (args, kwargs)
            return outputs

        # object.__setattr__: Keras's Layer.__setattr__ would track the function as state.
        object.__setattr__(layer, "call", call)
        hooked.append((layer, own is not None, own))
    try:
        yield calls
    finally:
        for layer, had_own, own in hooked:
            if had_own:
                object.__setattr__(layer, "call", own)
            else:
                object.__delattr__(layer, "call")
        counts: dict[int, int] = {}
        for layer, _ in calls:
            counts[id(layer)] = counts.get(id(layer), 0) + 1
        calls[:] = [(layer, out) for layer, out in calls if counts[id(layer)] == 1]


def output_shapes(model: keras.Model, inputs: Any) -> dict[str, tuple[int, ...]]:
    """Each direct layer's output shape (first output, batch axis included) on ``inputs``: the
    sizes a model with unknown ones (``(None, None, 3)``) really has for this batch."""
    with recording(model) as calls:
        model(inputs, training=False)
    return {
        layer.name: tuple(int(d) for d in keras.tree.flatten(outputs)[0].shape)
        for layer, outputs in calls
    }
