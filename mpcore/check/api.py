"""Is mixed precision safe for a user's model? A policy audit and a shadow run on one batch.

:func:`check` runs a model under each half-precision policy (its own, or :func:`mpcore.user.loader.
convert`'s clone with float32 outputs) beside a float32 copy with the same weights, on one batch:

* the policy audit: per layer compute and variable dtypes, a half-precision output or final
  softmax/sigmoid, a compiled float16 model without a ``LossScaleOptimizer``, float32 layers with
  a large share of the FLOPs, sizes that are not multiples of 8 (tensor cores), with FLOP shares;
* the shadow comparison: per layer the float32 activation's amax, the fractions a cast to the half
  format overflows or flushes to zero, and the half output's relative error; the loss in both;
* gradients: :func:`mpcore.precision.census.gradient_census` at the optimizer's loss scale (else
2**15)
  and at 1, and the window of power-of-two loss scales that keeps them finite with little
  underflow (:mod:`mpcore.check.shadow` holds the per-layer passes);
* the first non-finite value in the half forward pass, else its backward pass at loss scale 1.

Each finding has a severity and a one-line fix; errors make the verdict "unsafe" and the exit
status 1. Dropout and noise layers are switched off in the shadow passes so both runs compute the
same function; batch normalisation uses batch statistics (training mode), as in a training step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from mpcore.check.audit import SEVERITIES, Finding, audit
from mpcore.check.findings import gradient_findings, shadow_findings
from mpcore.check.shadow import (
    UNDERFLOW_LIMIT,
    LayerRow,
    LossScaleWindow,
    NonFinite,
    gradients,
    shadow,
)
from mpcore.check.warmup import Training, train_steps, training_findings
from mpcore.models.flops import layer_forward_flops
from mpcore.models.trace import output_shapes
from mpcore.names import HALF_PRECISIONS
from mpcore.precision.modes import KERAS_POLICY
from mpcore.user.data import load_batch, loss_function, loss_names, resolve_loss
from mpcore.user.loader import LoadedModel, convert, float32_clone, is_graph_model, load_model
from mpcore.user.values import check_values

CHECK_PRECISIONS: tuple[str, ...] = HALF_PRECISIONS


@dataclasses.dataclass
class PrecisionReport:
    """What :func:`check` found for one policy."""

    precision: str
    dtype: str
    converted: bool
    layers: list[LayerRow]
    findings: list[Finding]
    loss_float32: float
    loss_half: float
    output_error: float
    census: dict[str, Any]
    window: LossScaleWindow
    first_nonfinite: NonFinite | None
    verdict: str = ""
    #: ``--steps N``: the training steps taken before judging (None: judged at initialisation).
    training: Training | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


@dataclasses.dataclass
class CheckReport:
    model: str
    source: str
    parameters: int
    forward_flops: int
    batch_size: int
    loss: str
    data: str
    precisions: list[PrecisionReport]
    #: What the per-layer rows are (a subclassed model's are recorded as its call() runs)
    layers_shown: str = ""
    #: Each input of the batch: its shape (batch axis first) and dtype.
    inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 when every policy is safe (with loss scaling or without), 1 with error findings."""
        return 1 if any(report.errors for report in self.precisions) else 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy; non-finite numbers become None."""
        return _finite(dataclasses.asdict(self)) | {"exit_status": self.exit_status}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def check(
    model: keras.Model | LoadedModel | str,
    data: Any = None,
    *,
    loss: str | None = None,
    batch_size: int = 8,
    precisions: Sequence[str] = ("mixed_float16",),
    seed: int = 0,
    steps: int = 0,
    unknown_size: int | None = None,
    copies: dict[str, keras.Model] | None = None,
) -> CheckReport:
    """Check ``model`` (a model, a :class:`~mpcore.user.loader.LoadedModel` or a spec) on one batch.

    ``data`` is an ``(x, y)`` pair, a data spec for :func:`mpcore.user.data.load_batch`, or None
    for a seeded random batch (``unknown_size``: the side of an axis the model leaves unknown,
    such as a fully convolutional model's image side). With ``steps`` a copy trains that many
    steps on the batch under each policy first (:mod:`mpcore.check.warmup`) and is judged as
    trained; the user's model is left as it was. ``copies``, if given, receives each precision's
    model as judged (the converted clone, or the model itself), for a caller that needs it again
    (``mpbench check`` predicts its memory) rather than converting the model once more. Raises
    :class:`mpcore.user.loader.LoadError` for unusable input.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    for precision in precisions:
        if precision not in CHECK_PRECISIONS:
            raise ValueError(f"precision {precision!r}: valid: {', '.join(CHECK_PRECISIONS)}")
    loss_object, loss_label = resolve_loss(loaded.model, loss)
    if isinstance(data, tuple) and len(data) == 2:
        batch, data_label = data, "given (x, y)"
    else:
        batch = load_batch(data, loaded.model, batch_size, loss_object, seed, unknown_size)
        data_label = str(data) if data is not None else f"random batch (seed {seed})"
    check_values(data_label, loaded.model, *batch, loss or loss_names(loss_object))
    size = int(np.shape(keras.tree.flatten(batch[0])[0])[0])
    float32 = float32_clone(loaded.model, loaded.remake)
    # Output sizes from the batch itself: a fully convolutional model's are unknown until then.
    shapes = output_shapes(float32, batch[0])
    copies = {} if copies is None else copies
    reports = [
        _check_one(
            loaded, float32, precision, batch, loss_function(loss_object), shapes, steps, copies
        )
        for precision in precisions
    ]
    flops = sum(_flops(layer, shapes) for layer in float32.layers)
    return CheckReport(
        model=loaded.model.name,
        source=loaded.source,
        parameters=int(loaded.model.count_params()),
        forward_flops=flops,
        batch_size=size,
        loss=loss_label,
        data=data_label,
        precisions=reports,
        layers_shown=layers_shown(float32),
        inputs=[
            {"shape": [int(d) for d in np.shape(part)], "dtype": str(np.asarray(part).dtype)}
            for part in keras.tree.flatten(batch[0])
        ],
    )


def layers_shown(model: keras.Model) -> str:
    """What the per-layer rows of ``model`` are."""
    if is_graph_model(model):
        return "every layer of the model's graph (a nested model is one row)"
    return (
        f"the direct layers of the subclassed {type(model).__name__}, recorded as its call() "
        "runs them; a layer called more than once, and the layers inside a custom layer, "
        "cannot be isolated and are not shown"
    )


def _flops(layer: keras.layers.Layer, shapes: dict[str, tuple] | None = None) -> int:
    try:
        return layer_forward_flops(layer, shapes)
    except (AttributeError, ValueError):  # a shared layer has no single output shape
        return 0


def _check_one(
    loaded: LoadedModel,
    float32: keras.Model,
    precision: str,
    batch: tuple,
    loss_fn: Any,
    shapes: dict[str, tuple],
    steps: int = 0,
    copies: dict[str, keras.Model] | None = None,
) -> PrecisionReport:
    from mpcore.user.loader import model_precision

    model = loaded.model
    dtype = precision.removeprefix("mixed_")
    converted = model_precision(model) != KERAS_POLICY[precision]
    half = convert(model, precision, remake=loaded.remake) if converted else model
    if copies is not None:
        copies[precision] = half
    saved = half.get_weights() if steps and not converted else None
    try:
        training = None
        if steps:
            optimizer, training = train_steps(half, batch, loss_fn, dtype, steps)
            # The trained weights' shadow
            float32 = convert(half, "float32", compile=False, remake=loaded.remake)
        else:
            optimizer = (
                getattr(half, "optimizer", None) if getattr(half, "compiled", False) else None
            )
        report = _judge(half, float32, precision, batch, loss_fn, shapes, converted, optimizer)
    finally:
        if saved is not None:  # the user's own model trained in place: put its weights back
            half.set_weights(saved)
    if training is not None:
        report.training = training
        report.findings = sorted(
            [*training_findings(training), *report.findings],
            key=lambda f: SEVERITIES.index(f.severity),
        )
        report.verdict = _verdict(report)
    return report


def _judge(
    half: keras.Model,
    float32: keras.Model,
    precision: str,
    batch: tuple,
    loss_fn: Any,
    shapes: dict[str, tuple],
    converted: bool,
    optimizer: Any,
) -> PrecisionReport:
    dtype = precision.removeprefix("mixed_")
    size = int(np.shape(keras.tree.flatten(batch[0])[0])[0])
    shares = _flop_shares(float32, shapes)
    passes = shadow(float32, half, batch, loss_fn, dtype, shares)
    census, window = gradients(float32, batch, loss_fn, dtype, optimizer, passes)
    pinned = _pinned_by_convert(half) if converted else frozenset()
    # What broke comes before what the policy risks: the verdict names the first error.
    findings = [
        *shadow_findings(passes, dtype),
        *gradient_findings(window, dtype, census, _fixed_scale(optimizer)),
        *audit(half, precision, shares, size, pinned),
    ]
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    report = PrecisionReport(
        precision=precision,
        dtype=dtype,
        converted=converted,
        layers=passes.rows,
        findings=findings,
        loss_float32=passes.loss_float32,
        loss_half=passes.loss_half,
        output_error=passes.output_error,
        census=census,
        window=window,
        first_nonfinite=passes.first_nonfinite,
    )
    report.verdict = _verdict(report)
    return report


def _pinned_by_convert(half: keras.Model) -> frozenset[str]:
    """The layers :func:`mpcore.user.loader.convert` computes in float32: those that produce the
    outputs (a float32 head)."""
    from mpcore.user.loader import head_layers

    return frozenset(layer.name for layer in head_layers(half) if layer.compute_dtype == "float32")


def _fixed_scale(optimizer: Any) -> bool:
    # Keras 3 scales statically through the optimizer's loss_scale_factor; a
    # LossScaleOptimizer is always dynamic.
    return (
        optimizer is not None
        and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        and getattr(optimizer, "loss_scale_factor", None) is not None
    )


def _flop_shares(model: keras.Model, shapes: dict[str, tuple]) -> dict[str, float]:
    flops = {layer.name: _flops(layer, shapes) for layer in model.layers}
    total = sum(flops.values()) or 1
    return {name: value / total for name, value in flops.items()}


def _verdict(report: PrecisionReport) -> str:
    if report.errors:
        first = report.errors[0]
        where = f"{first.layer}: " if first.layer else ""
        return f"unsafe: {where}{first.message}"
    window = report.window
    if report.dtype == "float16" and window.underflow_at_1 > UNDERFLOW_LIMIT:
        return (
            f"safe with loss scaling: LossScaleOptimizer, scales 2^{window.low}..2^{window.high} "
            f"(dynamic scaling settles near 2^{window.settle})"
        )
    return "safe"


def assert_mixed_precision_safe(
    model: keras.Model | str,
    data: Any = None,
    *,
    loss: str | None = None,
    precisions: Sequence[str] = ("mixed_float16",),
    batch_size: int = 8,
) -> CheckReport:
    """Fail (``AssertionError``) when :func:`check` finds an error, listing each; else return
    the report. For a pytest suite::

        from mpcore.check.api import assert_mixed_precision_safe

        def test_my_model_is_safe_in_mixed_precision():
            assert_mixed_precision_safe(build_my_model(), (x_batch, y_batch))
    """
    report = check(model, data, loss=loss, batch_size=batch_size, precisions=precisions)
    problems = [
        f"{r.precision}: [{f.kind}] {f.layer or report.model}: {f.message} (fix: {f.fix})"
        for r in report.precisions
        for f in r.errors
    ]
    if problems:
        raise AssertionError(
            f"{report.model} is not safe in mixed precision:\n  " + "\n  ".join(problems)
        )
    return report
