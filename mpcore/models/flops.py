"""Model FLOPs: the multiply-adds of Conv and Dense layers per image, per layer and per
training step (used for TFLOP/s, % of peak, and the FLOP share of float32 layers).

A layer's output size comes from its graph, or, where that is unknown (a fully convolutional
model's ``(None, None, 3)`` input, a subclassed model's layers), from ``shapes``: the output
shapes of a real batch (:func:`mpcore.models.trace.output_shapes`). A layer whose size is known
from neither counts 0.
"""

from __future__ import annotations

import math
from typing import Any

import keras

_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _output_elements(layer: keras.layers.Layer, shapes: dict[str, tuple] | None) -> int | None:
    """Output elements per sample, from the traced shapes or the layer's graph output."""
    shape: Any = (shapes or {}).get(layer.name)
    if shape is None:
        try:
            shape = keras.tree.flatten(layer.output)[0].shape
        except (AttributeError, ValueError, RuntimeError):  # never called, or called twice
            return None
    dims = list(shape)[1:]
    return None if any(d is None for d in dims) else math.prod(int(d) for d in dims)


def layer_forward_flops(layer: keras.layers.Layer, shapes: dict[str, tuple] | None = None) -> int:
    """FLOPs of one image's forward pass through ``layer`` as :func:`forward_flops` counts them
    (a nested model counts its layers; layers other than Conv and Dense count 0)."""
    if isinstance(layer, keras.Model):
        return forward_flops(layer)
    if not isinstance(layer, (*_CONVOLUTIONS, keras.layers.Dense, keras.layers.DepthwiseConv2D)):
        return 0
    outputs = _output_elements(layer, shapes)
    if outputs is None:
        return 0
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # Kernel (h, w, channels, multiplier): each output element sees one h x w window.
        return 2 * outputs * math.prod(int(d) for d in layer.kernel.shape[:-2])
    # Each output element needs one multiply-add per kernel weight feeding it:
    # kernel (..., fan_in, out) for Conv (fan_in already divided by groups) and Dense.
    fan_in = math.prod(int(d) for d in layer.kernel.shape[:-1])
    return 2 * outputs * fan_in


def forward_flops(model: keras.Model, shapes: dict[str, tuple] | None = None) -> int:
    """FLOPs of one image's forward pass: 2 x the multiply-adds of Conv and Dense layers.

    These hold more than 99% of the arithmetic of CNNs such as ResNet50; normalisation,
    activations, pooling and bias adds are not counted. Nested models are counted through.
    ``shapes`` gives output shapes where the graph leaves them unknown (see the module).
    """
    return sum(layer_forward_flops(layer, shapes) for layer in model.layers)


def training_flops_per_step(
    model: keras.Model, batch_size: int, shapes: dict[str, tuple] | None = None
) -> int:
    """FLOPs of one training step: forward plus backward (about twice the forward), x batch."""
    return 3 * forward_flops(model, shapes) * batch_size
