"""Training memory predicted from the model alone: what grows with the batch, what does not.

:func:`predict_memory` reads a built model (built under the precision in question, so each layer
carries its compute dtype) and adds up:

- **fixed** (independent of the batch): the weights, float32 under every Keras policy (the
  *master weights* of mixed precision); their gradients, float32 too (the gradient of a cast
  is cast back); the optimizer's slots per trainable weight (Adam: two, float32); and, in a
  mixed precision, the half-precision copy of each weight a layer casts for its matmul;
- **per sample**: the activations kept for the backward pass, taken as every layer's output (its
  shape without the batch, in the layer's compute dtype: 2 bytes under mixed_float16 and
  mixed_bfloat16, 4 under float32) plus the model's inputs; a normalization layer under a half
  precision also keeps the float32 copy of its input it computes on. A layer's output is what
  the next layer's gradient needs (a convolution keeps its input, a ReLU its output, batch
  normalisation its input), so one tensor per layer output is the first-order count. XLA can
  fuse the float32 copy away; the count is that of a step without it.

A measured slope differs both ways. It is larger by what the count leaves out: the gradient of
each activation during the backward pass (transient, about the largest one or two at a time),
workspace of the convolution kernels, the data pipeline's copy of the batch, casts a layer
makes of its input, and on a CPU the allocator's rounding and caching. It is smaller where the
runtime frees an output no gradient reads: in a convolution, batch normalization, ReLU chain
the normalization's output is read by nothing in the backward pass (the ReLU's gradient reads
its own output, the normalization's its input), so a ResNet's count is high. The tests hold
the measured slope within a stated factor of this prediction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras

#: Bytes per element of the dtypes a layer can compute in.
DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int32": 4,
    "int64": 8,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
#: Slots the optimizer keeps per trainable weight (Adam's first and second moments).
ADAM_SLOTS = 2


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A model's predicted training memory at one batch size (bytes)."""

    model: str
    batch_size: int
    #: The compute dtype most of the layers use (``float32``, ``float16``, ``bfloat16``).
    compute_dtype: str
    parameters: int
    trainable_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    #: Half-precision copies of the weights a mixed-precision layer casts for its computation.
    cast_weights_bytes: int
    #: Activations kept for the backward pass, for one sample.
    activation_bytes_per_sample: int

    @property
    def fixed_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.gradients_bytes
            + self.optimizer_bytes
            + self.cast_weights_bytes
        )

    @property
    def activation_bytes(self) -> int:
        return self.activation_bytes_per_sample * self.batch_size

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.activation_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "fixed_bytes": self.fixed_bytes,
            "activation_bytes": self.activation_bytes,
            "total_bytes": self.total_bytes,
        }


def _leaves(model: keras.Model) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    for layer in model.layers:
        layers.extend(_leaves(layer) if isinstance(layer, keras.Model) else [layer])
    return layers


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype)).removeprefix("tf.")


def _elements(shape: Any) -> int:
    dims = [d for d in tuple(shape)[1:]]
    if any(d is None for d in dims):
        raise ValueError(f"an output shape {tuple(shape)} has an unknown size besides the batch")
    return math.prod(int(d) for d in dims)


def _outputs(layer: keras.layers.Layer) -> list[Any]:
    """The symbolic outputs of every call of ``layer`` in the model's graph."""
    tensors = []
    for node in getattr(layer, "_inbound_nodes", []):
        tensors.extend(keras.tree.flatten(node.output_tensors))
    if not tensors:
        try:
            tensors = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):
            return []
    return tensors


#: Layers that compute in float32 whatever their policy: under a half-precision policy Keras
#: casts their input up (batch normalization: "prone to overflow with float16/bfloat16 inputs"),
#: and that float32 copy is what their gradient reads.
FLOAT32_INSIDE = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def _inputs(layer: keras.layers.Layer) -> list[Any]:
    tensors = []
    for node in getattr(layer, "_inbound_nodes", []):
        tensors.extend(keras.tree.flatten(node.input_tensors))
    return tensors


def activation_bytes_per_sample(model: keras.Model, sample: Any = None) -> int:
    """Bytes of one sample's activations kept for the backward pass: the model's inputs, the
    output of every layer call, each in its own dtype, and the float32 copy of its input a
    normalization layer makes under a half-precision policy (:data:`FLOAT32_INSIDE`).

    Read from the model's graph; a model without one (subclassed) or with sizes unknown until
    a batch (fully convolutional) is counted on ``sample`` (inputs of one or more samples) as
    :func:`recorded_activation_bytes` does, and raises ``ValueError`` without it."""
    try:
        total = 0
        for tensor in keras.tree.flatten(model.inputs):
            total += _elements(tensor.shape) * DTYPE_BYTES.get(_dtype_name(tensor.dtype), 4)
        for layer in _leaves(model):
            if isinstance(layer, keras.layers.InputLayer):
                continue
            for tensor in _outputs(layer):
                total += _elements(tensor.shape) * DTYPE_BYTES.get(_dtype_name(tensor.dtype), 4)
            half = _dtype_name(layer.compute_dtype) in ("float16", "bfloat16")
            if half and isinstance(layer, FLOAT32_INSIDE):
                total += sum(_elements(tensor.shape) * 4 for tensor in _inputs(layer))
        return total
    except (AttributeError, ValueError) as error:
        if sample is None:
            raise ValueError(f"no graph of known sizes to count ({error})") from None
        return recorded_activation_bytes(model, sample)


def _bytes(tensor: Any) -> int:
    return math.prod(int(d) for d in tensor.shape) * DTYPE_BYTES.get(_dtype_name(tensor.dtype), 4)


def recorded_activation_bytes(model: keras.Model, sample: Any) -> int:
    """:func:`activation_bytes_per_sample` counted on a forward pass over ``sample``: the outputs
    of the model's direct layers as its ``call()`` runs them (:mod:`mpcore.models.trace`: a
    nested model or a custom layer holding layers counts its output only, a layer called more
    than once is not counted), per sample."""
    from mpcore.models.trace import recording

    arguments: dict[int, tuple] = {}
    with recording(model, arguments) as calls:
        model(sample, training=False)
    flat = keras.tree.flatten(sample)
    samples = max(int(flat[0].shape[0]), 1)
    total = sum(_bytes(tensor) for tensor in flat)
    for layer, outputs in calls:
        total += sum(_bytes(tensor) for tensor in keras.tree.flatten(outputs))
        half = _dtype_name(layer.compute_dtype) in ("float16", "bfloat16")
        if half and isinstance(layer, FLOAT32_INSIDE) and id(layer) in arguments:
            args, _ = arguments[id(layer)]
            total += sum(
                math.prod(int(d) for d in t.shape) * 4
                for t in keras.tree.flatten(args)
                if hasattr(t, "shape")
            )
    return total // samples


def main_compute_dtype(model: keras.Model) -> str:
    """The compute dtype of most of the model's weighted layers (float32 if it has none)."""
    counts: dict[str, int] = {}
    for layer in _leaves(model):
        if layer.weights:
            dtype = _dtype_name(layer.compute_dtype)
            counts[dtype] = counts.get(dtype, 0) + 1
    return max(counts, key=counts.get) if counts else "float32"  # type: ignore[arg-type]


def predict_memory(
    model: keras.Model, batch_size: int, optimizer_slots: int = ADAM_SLOTS, sample: Any = None
) -> MemoryEstimate:
    """The training memory of ``model`` (built under its precision) at ``batch_size``;
    ``sample`` (inputs) counts the activations of a model without a graph of known sizes
    (:func:`activation_bytes_per_sample`)."""
    weights = sum(
        math.prod(int(d) for d in w.shape) * DTYPE_BYTES.get(_dtype_name(w.dtype), 4)
        for w in model.weights
    )
    trainable = [w for w in model.trainable_weights]
    trainable_bytes = sum(
        math.prod(int(d) for d in w.shape) * DTYPE_BYTES.get(_dtype_name(w.dtype), 4)
        for w in trainable
    )
    cast = 0
    for layer in _leaves(model):
        compute = _dtype_name(layer.compute_dtype)
        if compute in ("float16", "bfloat16"):
            cast += sum(
                math.prod(int(d) for d in w.shape) * 2
                for w in layer.weights
                if _dtype_name(w.dtype) == "float32"
            )
    return MemoryEstimate(
        model=model.name,
        batch_size=batch_size,
        compute_dtype=main_compute_dtype(model),
        parameters=sum(math.prod(int(d) for d in w.shape) for w in model.weights),
        trainable_parameters=sum(math.prod(int(d) for d in w.shape) for w in trainable),
        weights_bytes=weights,
        gradients_bytes=trainable_bytes,
        optimizer_bytes=optimizer_slots * trainable_bytes,
        cast_weights_bytes=cast,
        activation_bytes_per_sample=activation_bytes_per_sample(model, sample),
    )


def half_precision_saving(float32: MemoryEstimate, half: MemoryEstimate) -> str:
    """``mixed_bfloat16 saves 1.2 MiB of activations per sample (52%)``-style sentence part."""
    saved = float32.activation_bytes_per_sample - half.activation_bytes_per_sample
    share = (
        saved / float32.activation_bytes_per_sample if float32.activation_bytes_per_sample else 0
    )
    return f"saves {saved / 2**20:.2f} MiB of activations per sample ({share:.0%})"
