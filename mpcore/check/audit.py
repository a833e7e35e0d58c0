"""The policy audit of :mod:`mpcore.check.api`: what a model's layers compute in, and what that
costs.

Findings, each with a severity and a one-line fix: a half-precision output or final
softmax/sigmoid; a compiled float16 model without a ``LossScaleOptimizer``; float32 layers with a
large share of the FLOPs; Dense units, conv filters, input channels or a batch size that are not
multiples of 8 (tensor cores need them), with the layer's share of the model's FLOPs.
"""

from __future__ import annotations

import dataclasses

import keras

from mpcore.models.registry import multiple_of_8_layers
from mpcore.user.loader import head_layers

SEVERITIES: tuple[str, ...] = ("error", "warning", "info")
#: A float32 layer with at least this share of the FLOPs forgoes much of the speedup.
FLOAT32_SHARE_LIMIT = 0.10
#: Below this share of the FLOPs a size that is not a multiple of 8 costs too little to warn.
SHARE_WORTH_WARNING = 0.01


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding: ``severity`` is error, warning or info; ``layer`` None for the model."""

    severity: str
    kind: str
    layer: str | None
    message: str
    fix: str


def _half_severity(dtype: str) -> str:
    # float16 outputs lose small probabilities (an infinite cross-entropy); bfloat16 keeps the
    # range and loses precision only.
    return "error" if dtype == "float16" else "warning"


def audit(
    half: keras.Model,
    precision: str,
    shares: dict[str, float],
    size: int,
    pinned: frozenset[str] = frozenset(),
) -> list[Finding]:
    """The audit's findings for ``half``, the model as it runs under ``precision``; ``shares``
    maps layer names to their share of the forward FLOPs, ``size`` is the batch size, ``pinned``
    names the layers :func:`mpcore.user.loader.convert` itself put in float32 (its head): no
    finding blames the user for those."""
    dtype = precision.removeprefix("mixed_")
    findings: list[Finding] = []
    for head in head_layers(half):
        activation = getattr(getattr(head, "activation", None), "__name__", None)
        if isinstance(head, keras.layers.Softmax):
            activation = "softmax"
        output_dtype = keras.tree.flatten(head.output)[0].dtype
        if head.compute_dtype == dtype and activation in ("softmax", "sigmoid"):
            findings.append(
                Finding(
                    _half_severity(dtype),
                    "half_final_activation",
                    head.name,
                    f"the final {activation} is computed in {dtype}",
                    "give the last layer dtype='float32' or end with "
                    f"keras.layers.Activation('{activation}', dtype='float32')",
                )
            )
        elif output_dtype == dtype:
            findings.append(
                Finding(
                    _half_severity(dtype),
                    "half_output",
                    head.name,
                    f"the model output is {dtype}",
                    "give the last layer dtype='float32' so the loss sees float32 values",
                )
            )
    if (
        dtype == "float16"
        and getattr(half, "compiled", False)
        and not isinstance(half.optimizer, keras.optimizers.LossScaleOptimizer)
        and getattr(half.optimizer, "loss_scale_factor", None) is None
    ):
        findings.append(
            Finding(
                "error",
                "no_loss_scaling",
                None,
                f"compiled float16 model with {type(half.optimizer).__name__}, not a "
                "LossScaleOptimizer: small gradients flush to zero",
                "compile under mixed_float16 with auto_scale_loss=True (the default) or wrap "
                "it: keras.optimizers.LossScaleOptimizer(optimizer)",
            )
        )
    for layer in half.layers:
        share = shares.get(layer.name, 0.0)
        if layer.name in pinned:
            continue
        if layer.weights and layer.compute_dtype == "float32" and share >= FLOAT32_SHARE_LIMIT:
            findings.append(
                Finding(
                    "warning",
                    "float32_heavy",
                    layer.name,
                    f"computes in float32 and holds {share:.0%} of the FLOPs",
                    "let it compute in the half type and put only the final activation in a "
                    "float32 keras.layers.Activation",
                )
            )
    attributes = ("units", "filters", "input_channels")
    for layer, attribute, value in multiple_of_8_layers(half, attributes):
        share = shares.get(layer.name, 0.0)
        lower, upper = value - value % 8, value + 8 - value % 8
        if attribute == "input_channels":
            fix = f"give it {upper} input channels (pad the input or widen the layer feeding it)"
        else:
            fix = f"make it {lower} or {upper}" if lower else f"make it {upper}"
        findings.append(
            Finding(
                "warning" if share >= SHARE_WORTH_WARNING else "info",
                "not_multiple_of_8",
                layer.name,
                f"{attribute}={value} is not a multiple of 8 (no tensor cores) for "
                f"{100 * share:.3g}% of the FLOPs",
                fix,
            )
        )
    if size % 8:
        findings.append(
            Finding(
                "warning",
                "not_multiple_of_8",
                None,
                f"batch size {size} is not a multiple of 8 (no tensor cores)",
                f"use a batch size of {size + 8 - size % 8}",
            )
        )
    return findings
