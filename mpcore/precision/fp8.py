"""FP8 training with Keras's own float8 layers: quantizing a model and checking the result.

``model.quantize("float8")`` switches every ``Dense`` and ``EinsumDense`` layer (including those
inside ``MultiHeadAttention``) to the ``float8_from_<policy>`` dtype policy: the layer keeps its
float32 kernel and its compute dtype, and quantize-dequantizes the matmul's operands to E4M3
(inputs, kernel) and the output gradient to E5M2, each with a per-tensor scale computed from a
history of amax values (delayed scaling; see ``Dense._float8_call`` in Keras). On a GPU of
compute capability 8.9+ XLA fuses the quantize-dequantize pairs into FP8 GEMMs; elsewhere the
same numerics run emulated in the compute dtype.

:func:`quantize_float8` applies that to a built model and leaves the classification head alone
(the last layer stays in float32, as FP8 training recipes keep it); :func:`float8_report` lists
what does not match, for a mode check. Build the model under ``mixed_bfloat16``: bfloat16 is
the compute dtype of FP8 recipes (float8 operands are dequantized into it) and needs no loss
scaling, while the E5M2 gradient scale already does per-tensor what a loss scale would.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras

#: The dtype policy float8 training builds the model under before quantizing it.
FLOAT8_BASE_POLICY = "mixed_bfloat16"
#: The layer every registry model ends in (see :mod:`mpcore.models.registry`); it is not quantized.
HEAD_NAME = "predictions"


def _all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    # model.layers holds only the top level; the EinsumDense projections of MultiHeadAttention
    # are nested. _flatten_layers is what Model.quantize itself walks.
    yield from model._flatten_layers(include_self=False, recursive=True)


def float8_candidates(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers Keras can quantize to float8: exactly ``Dense`` or ``EinsumDense`` (their
    subclasses refuse), other than the head: the registry's ``predictions``, or a layer pinned
    to the plain float32 policy (a user's model converted to a half policy keeps its output
    layers so; a quantized layer's policy is ``float8_from_...``, so it stays a candidate)."""
    return [
        layer
        for layer in _all_layers(model)
        if type(layer) in (keras.layers.Dense, keras.layers.EinsumDense)
        and layer.name != HEAD_NAME
        and not (layer.dtype_policy.name == "float32" and _computes_in_half(model))
    ]


def _computes_in_half(model: keras.Model) -> bool:
    return any(layer.compute_dtype in ("float16", "bfloat16") for layer in _all_layers(model))


def quantize_float8(model: keras.Model) -> list[str]:
    """Quantize every float8 candidate of a built ``model`` in place and return their names.

    Call it before ``compile`` (it adds the scale and amax-history variables). Raises
    ``ValueError`` when the model has no Dense or EinsumDense layer to quantize.
    """
    candidates = float8_candidates(model)
    if not candidates:
        raise ValueError(
            f"model {model.name} has no Dense or EinsumDense layer besides its head: "
            "float8 would change nothing"
        )
    # Layer by layer, as Model.quantize does inside: its ``filters`` argument (which would
    # spare the head) only exists from Keras 3.11, and mpbench supports Keras 3.10.
    for layer in candidates:
        layer.quantize("float8")
    # What Model.quantize does after changing layers: the compiled functions called the old
    # layers, and the torch backend must track the new variables.
    model.train_function = model.test_function = model.predict_function = None
    if keras.backend.backend() == "torch":
        for layer in _all_layers(model):
            layer._track_variables()
    return [layer.name for layer in candidates]


def float8_report(model: keras.Model) -> list[str]:
    """What keeps ``model`` from being a float8 model: a candidate layer not quantized to
    float8, a head that is quantized or does not compute in float32, or no candidate at all."""
    problems = [
        f"layer {layer.name} is not quantized to float8 (policy {layer.dtype_policy.name})"
        for layer in float8_candidates(model)
        if layer.quantization_mode != "float8"
    ]
    if not float8_candidates(model):
        problems.append(f"model {model.name} has no Dense or EinsumDense layer to quantize")
    head = model.layers[-1]
    if head.quantization_mode is not None:
        problems.append(f"head {head.name} is quantized to {head.quantization_mode}")
    if head.compute_dtype != "float32":
        problems.append(f"head {head.name} computes in {head.compute_dtype}, expected float32")
    return problems
