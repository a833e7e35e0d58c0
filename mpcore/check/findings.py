"""The findings of :func:`mpcore.check.api.check` drawn from the shadow comparison and the
gradients (:mod:`mpcore.check.shadow`): each names the layer, the problem and a one-line fix."""

from __future__ import annotations

import math
from typing import Any

from mpcore.check.audit import Finding
from mpcore.check.shadow import DEFAULT_LOSS_SCALE, UNDERFLOW_LIMIT, LossScaleWindow
from mpcore.precision.census import float_format

#: Relative error of the model's output (and of the loss) against float32 worth a warning. A
#: randomly initialised ResNet50 in training mode (batch statistics over a 2x2 last feature map)
#: shows 4-8% in float16 and about 21% in bfloat16 on random batches; the limits are ~2.5x that.
OUTPUT_ERROR_LIMIT = {"float16": 0.2, "bfloat16": 0.5}


def shadow_findings(passes: Any, dtype: str) -> list[Finding]:
    fmt = float_format(dtype)
    findings: list[Finding] = []
    first = passes.first_nonfinite
    if first is not None:
        where = "its gradient" if first.pass_name == "backward" else "its output"
        findings.append(
            Finding(
                "error",
                "nonfinite",
                first.layer,
                f"first inf/NaN in the {first.pass_name} pass under {dtype} ({where}; float32 "
                f"values there span [{first.low:.3g}, {first.high:.3g}], {dtype} holds "
                f"±{fmt.largest:.5g})",
                "scale the values down before it (normalise), or give it dtype='float32'",
            )
        )
    for row in passes.rows:
        if row.compute_dtype != dtype or (first is not None and row.name == first.layer):
            continue
        if row.overflow > 0:
            findings.append(
                Finding(
                    "error",
                    "activation_overflow",
                    row.name,
                    f"{row.overflow:.2%} of its activations exceed {dtype}'s {fmt.largest:.5g} "
                    f"(amax {row.amax:.3g})",
                    "normalise its input, or give it dtype='float32'",
                )
            )
        elif row.underflow > UNDERFLOW_LIMIT:
            findings.append(
                Finding(
                    "warning",
                    "activation_underflow",
                    row.name,
                    f"{row.underflow:.1%} of its non-zero activations flush to zero in {dtype}",
                    "rescale its input or give it dtype='float32'",
                )
            )
    limit = OUTPUT_ERROR_LIMIT[dtype]
    if first is None and passes.output_error > limit:
        # Named by its own error: the accumulated one is large for every layer after it too.
        owned = [row for row in passes.rows if row.own_error is not None]
        worst = max(owned, key=lambda row: row.own_error, default=None)
        where = f"; the largest own error is this layer's, {worst.own_error:.1%}" if worst else ""
        findings.append(
            Finding(
                "warning",
                "output_error",
                worst.name if worst else None,
                f"the output differs from float32 by {passes.output_error:.1%} (relative){where}",
                "compute the layer with the largest own error in float32 (dtype='float32')",
            )
        )
    relative = abs(passes.loss_half - passes.loss_float32) / max(abs(passes.loss_float32), 1e-12)
    if first is None and relative > limit:
        findings.append(
            Finding(
                "warning",
                "loss_error",
                None,
                f"the loss is {passes.loss_half:.5g} under {dtype}, {passes.loss_float32:.5g} "
                "in float32",
                "compute the loss from float32 outputs (a float32 head)",
            )
        )
    return findings


def gradient_findings(
    window: LossScaleWindow, dtype: str, census: dict, fixed_scale: bool
) -> list[Finding]:
    findings: list[Finding] = []
    if window.low is None and window.nonzero:
        findings.append(
            Finding(
                "error",
                "no_loss_scale_window",
                window.worst_variable,
                f"no power-of-two loss scale keeps the gradients finite with under "
                f"{UNDERFLOW_LIMIT:.0%} flushed to zero in {dtype}",
                "compute the layers with extreme gradients in float32, or use mixed_bfloat16",
            )
        )
    elif not window.nonzero:
        findings.append(
            Finding(
                "warning",
                "zero_gradients",
                None,
                "every gradient is zero on this batch: nothing to judge",
                "check with real data (--data) and the training loss (--loss)",
            )
        )
    elif window.underflow_at_1 > UNDERFLOW_LIMIT and dtype == "float16":
        findings.append(
            Finding(
                "info",
                "needs_loss_scaling",
                window.worst_variable,
                f"{window.underflow_at_1:.1%} of the gradient values flush to zero without loss "
                f"scaling (loss scale 1); scales 2^{window.low}..2^{window.high} keep them",
                "train with a LossScaleOptimizer (compile does it under mixed_float16)",
            )
        )
    scale = census.get("loss_scale", DEFAULT_LOSS_SCALE)
    if window.low is not None and not window.low <= math.log2(scale) <= window.high:
        span = f"2^{window.low}..2^{window.high}"
        if fixed_scale:
            # A fixed scale is never lowered: every step overflows or flushes gradients.
            findings.append(
                Finding(
                    "error",
                    "loss_scale_outside_window",
                    None,
                    f"the fixed loss scale {scale:g} is outside {span}",
                    f"use a dynamic LossScaleOptimizer or a fixed scale of 2**{window.settle}",
                )
            )
        elif dtype == "float16":
            findings.append(
                Finding(
                    "info",
                    "loss_scale_adjusts",
                    None,
                    f"the dynamic loss scale starts at {scale:g}, outside {span}: it settles near "
                    f"2^{window.settle} after a few skipped steps",
                    f"optional: LossScaleOptimizer(optimizer, initial_scale=2**{window.settle})",
                )
            )
    return findings
