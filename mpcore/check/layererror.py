"""Each layer's own error, for
:mod:`mpcore.check.shadow`.

The shadow comparison feeds the half model its own half outputs, so a layer's relative error there
is accumulated: it inherits every error before it. :func:`own_outputs` runs each half layer alone
on the float32 shadow's input to that layer, so the error it adds is its own and the layer that
loses precision is the one named.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from mpcore.probe.backend import tf


def _float64(values: Any) -> np.ndarray | None:
    if not tf.as_dtype(values.dtype).is_floating:
        return None
    return np.asarray(values).astype(np.float64).ravel()


def own_outputs(
    float32: keras.Model,
    rows32: list[tuple[Any, list[int]]],
    acts32: list[np.ndarray],
    x: Any,
    half_layers: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Each half layer's output on the float32 shadow's input to that layer (its own error's
    numerator), by layer name; a layer that cannot be run alone (a shared layer, one outside the
    graph) is left out."""
    values: dict[int, Any] = {}
    try:
        for tensor, value in zip(float32.inputs, keras.tree.flatten(x), strict=True):
            values[id(tensor)] = value
    except (AttributeError, ValueError, TypeError):
        return {}
    for layer, positions in rows32:
        for tensor, position in zip(keras.tree.flatten(layer.output), positions, strict=False):
            values[id(tensor)] = acts32[position]
    own: dict[str, np.ndarray] = {}
    for layer, _ in rows32:
        twin = half_layers.get(layer.name)
        nodes = getattr(layer, "_inbound_nodes", [])
        if twin is None or len(nodes) != 1:
            continue
        try:
            args, kwargs = nodes[0].arguments.fill_in(values)
        except Exception:  # a layer that only runs inside its graph has no own error
            continue
        _run_alone(own, layer.name, twin, args, {**kwargs, "training": True})
    return own


def recorded_own_outputs(
    rows32: list[tuple[Any, list[int]]],
    arguments: dict[int, tuple],
    half_layers: dict[str, Any],
) -> dict[str, np.ndarray]:
    """:func:`own_outputs` for a subclassed model, which has no graph: each half layer is called
    on the arguments its float32 twin's ``call()`` was recorded with
    (:func:`mpcore.models.trace.recording`), ``training`` included."""
    own: dict[str, np.ndarray] = {}
    for layer, _ in rows32:
        twin = half_layers.get(layer.name)
        if twin is None or id(layer) not in arguments:
            continue
        args, kwargs = arguments[id(layer)]
        _run_alone(own, layer.name, twin, args, kwargs)
    return own


def _run_alone(
    own: dict[str, np.ndarray], name: str, twin: Any, args: Any, kwargs: dict[str, Any]
) -> None:
    try:
        outputs = keras.tree.flatten(twin(*args, **kwargs))
    except Exception:  # a layer that only runs inside its model has no own error
        return
    parts = [_float64(o) for o in outputs]
    if parts and all(part is not None for part in parts):
        own[name] = np.concatenate(parts)
