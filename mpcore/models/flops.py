"""Model FLOPs: the multiply-adds of Conv and Dense layers per image, per layer and per
training step (used for TFLOP/s, % of peak, and the FLOP share of float32 layers).
"""

from __future__ import annotations

import math

import keras

_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def layer_forward_flops(layer: keras.layers.Layer) -> int:
    """FLOPs of one image's forward pass through ``layer`` as :func:`forward_flops` counts them
    (a nested model counts its layers; layers other than Conv and Dense count 0)."""
    if isinstance(layer, keras.Model):
        return forward_flops(layer)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # Kernel (h, w, channels, multiplier): each output element sees one h x w window.
        outputs = math.prod(int(d) for d in layer.output.shape[1:])
        return 2 * outputs * math.prod(int(d) for d in layer.kernel.shape[:-2])
    if isinstance(layer, (*_CONVOLUTIONS, keras.layers.Dense)):
        # Each output element needs one multiply-add per kernel weight feeding it:
        # kernel (..., fan_in, out) for Conv (fan_in already divided by groups) and Dense.
        outputs = math.prod(int(d) for d in layer.output.shape[1:])
        fan_in = math.prod(int(d) for d in layer.kernel.shape[:-1])
        return 2 * outputs * fan_in
    return 0


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one image's forward pass: 2 x the multiply-adds of Conv and Dense layers.

    These hold more than 99% of the arithmetic of CNNs such as ResNet50; normalisation,
    activations, pooling and bias adds are not counted. Nested models are counted through.
    """
    return sum(layer_forward_flops(layer) for layer in model.layers)


def training_flops_per_step(model: keras.Model, batch_size: int) -> int:
    """FLOPs of one training step: forward plus backward (about twice the forward), x batch."""
    return 3 * forward_flops(model) * batch_size
