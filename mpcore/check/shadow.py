"""The passes behind :mod:`mpcore.check.api`: per-layer shadow comparison and the loss-scale window.

:func:`shadow` runs a float32 model and its half-precision twin (same weights) on one batch and
compares every layer's output; the half forward pass, and its backward pass at loss scale 1, are
searched for the first inf/NaN in execution order. :func:`gradients` takes the float32 gradient
census and derives, from its log2 histogram, which power-of-two loss scales keep the gradients
finite in the half format with little flushed to zero: multiplying by 2**k shifts every bin by k
exactly, so one census answers for every scale.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from mpcore.check.layererror import own_outputs, recorded_own_outputs
from mpcore.models.trace import recording
from mpcore.precision.census import (
    GradientCensus,
    Log2Histogram,
    cast_census,
    dense_gradient,
    float_format,
    gradient_censuses,
)
from mpcore.probe.backend import tf
from mpcore.train.fit import current_loss_scale
from mpcore.user.loader import is_graph_model

DEFAULT_LOSS_SCALE = 2.0**15
#: Gradient underflow above this fraction needs loss scaling.
UNDERFLOW_LIMIT = 0.01
#: The loss scales considered: the float32 scale variable holds any power of two in this range.
SCALE_EXPONENTS = range(-64, 128)


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One layer of the shadow comparison (figures of its float32 output)."""

    name: str
    class_name: str
    compute_dtype: str
    variable_dtype: str
    flop_share: float
    amax: float
    overflow: float
    underflow: float
    relative_error: float
    finite: bool
    #: The layer's own error: the half layer run on the float32 shadow's input, against the
    #: float32 output (``relative_error`` is accumulated: the half layer is fed half inputs, so
    #: it inherits every error before it). None where the layer cannot be run alone.
    own_error: float | None = None


@dataclasses.dataclass(frozen=True)
class NonFinite:
    """The first inf/NaN: the layer, the pass, the loss scale of the pass, and the range of the
    finite values there (float32 outputs for the forward pass, the half gradient for backward)."""

    layer: str
    pass_name: str
    loss_scale: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class LossScaleWindow:
    """Power-of-two exponents: ``low..high`` keeps every gradient finite with under
    :data:`UNDERFLOW_LIMIT` flushed to zero (None: no such scale); ``settle`` is the highest scale
    without overflow, where dynamic loss scaling ends up, judged on ``based_on``'s gradients;
    ``underflow_at_1`` is the weight gradients' share flushed at scale 1. ``curve`` holds
    (exponent, underflow, overflow) fractions around the window, for plotting."""

    low: int | None
    high: int | None
    settle: int | None
    underflow_at_1: float
    nonzero: bool
    worst_variable: str | None
    curve: list[tuple[int, float, float]]
    #: Which gradients the window was judged on.
    based_on: str = "weight gradients"


@dataclasses.dataclass
class ShadowResult:
    rows: list[LayerRow]
    loss_float32: float
    loss_half: float
    output_error: float
    first_nonfinite: NonFinite | None
    #: The float32 gradients of the loss for the outputs of the layers that compute in the half
    #: type (loss scale 1): the values the half backward pass carries between layers.
    activation_gradients: Log2Histogram | None = None
    activation_layers: int = 0


#: Layers whose training-mode output is random; switched off so both passes compute alike.
_NOISE_ATTRIBUTES = {
    keras.layers.Dropout: "rate",
    keras.layers.GaussianDropout: "rate",
    keras.layers.AlphaDropout: "rate",
    keras.layers.GaussianNoise: "stddev",
    keras.layers.SpatialDropout1D: "rate",
    keras.layers.SpatialDropout2D: "rate",
    keras.layers.SpatialDropout3D: "rate",
}


@contextlib.contextmanager
def quiet_noise(*models: keras.Model) -> Iterator[None]:
    """Zero the rate of dropout and noise layers, and keep non-trainable state (batch-norm
    statistics, seed generators) as it was."""
    saved: list[tuple[Any, str, Any]] = []
    states = [(v, v.numpy()) for model in models for v in model.non_trainable_variables]
    try:
        for model in models:
            for layer in model._flatten_layers(include_self=False):
                for kind, attribute in _NOISE_ATTRIBUTES.items():
                    if isinstance(layer, kind):
                        saved.append((layer, attribute, getattr(layer, attribute)))
                        setattr(layer, attribute, 0.0)
        yield
    finally:
        for layer, attribute, value in saved:
            setattr(layer, attribute, value)
        for variable, value in states:
            variable.assign(value)


def _probe(model: keras.Model) -> tuple[list[tuple[Any, list[int]]], Any, list[int]]:
    """(layers with their flat output positions, a callable returning all outputs, positions of
    the model's outputs). Layers without a single output node (shared layers) are left out;
    a model without a graph gives no layers and only its outputs."""
    rows: list[tuple[Any, list[int]]] = []
    tensors: list[Any] = []
    try:
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            try:
                outputs = keras.tree.flatten(layer.output)
            except (AttributeError, ValueError, RuntimeError):
                continue
            rows.append((layer, list(range(len(tensors), len(tensors) + len(outputs)))))
            tensors.extend(outputs)
        positions = [next(i for i, t in enumerate(tensors) if t is out) for out in model.outputs]
        # A Sequential model has no structured .input; a Functional one wants its structure.
        if isinstance(model, keras.Sequential):
            inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        else:
            inputs = model.input
        probe = keras.Model(inputs, tensors)
        return rows, probe, positions
    except (AttributeError, ValueError, StopIteration):
        count = len(keras.tree.flatten(model.outputs)) if model.outputs else 1
        return (
            [],
            lambda x, training: keras.tree.flatten(model(x, training=training)),
            list(range(count)),
        )


def _forward(
    model: keras.Model, x: Any, arguments: dict[int, tuple] | None = None
) -> tuple[list[tuple[Any, list[int]]], list[Any], list[int]]:
    """One training-mode pass: (layers with their flat output positions, all outputs, positions
    of the model's outputs). A graph model's layers come from its graph (:func:`_probe`); a
    subclassed model's are recorded as its call() runs them (:mod:`mpcore.models.trace`), with
    each one's ``(args, kwargs)`` put in ``arguments`` if given."""
    if is_graph_model(model):
        rows, probe, positions = _probe(model)
        return rows, list(probe(x, training=True)), positions
    with recording(model, arguments) as calls:
        outputs = keras.tree.flatten(model(x, training=True))
    rows: list[tuple[Any, list[int]]] = []
    tensors: list[Any] = []
    for layer, produced in calls:
        flat = keras.tree.flatten(produced)
        rows.append((layer, list(range(len(tensors), len(tensors) + len(flat)))))
        tensors.extend(flat)
    positions = list(range(len(tensors), len(tensors) + len(outputs)))
    return rows, tensors + outputs, positions


def _float64(values: Any) -> np.ndarray | None:
    if not tf.as_dtype(values.dtype).is_floating:
        return None
    return np.asarray(values).astype(np.float64).ravel()


def _joined(values: list[Any], positions: list[int]) -> np.ndarray | None:
    parts = [_float64(values[i]) for i in positions]
    parts = [p for p in parts if p is not None]
    return np.concatenate(parts) if parts else None


def euclidean_norm(values: np.ndarray) -> float:
    """``||values||`` of a float64 array, summed by numpy itself rather than by BLAS.

    Why not ``np.linalg.norm``: for a 1-D float64 array it is OpenBLAS's threaded dot product,
    whose threads spin and wait for cores on a busy machine: 5-8 ms of CPU (13-18 ms wall) for
    131,072 values on the shared 2-core Zen 3 at load 4, against 0.03 ms with one BLAS thread
    and 0.2-0.5 ms for this sum. A ResNet50 check takes about 1,400 norms: 10 s of its 27."""
    return float(np.sqrt(np.sum(np.square(values))))


def relative_error(half: np.ndarray, reference: np.ndarray) -> float:
    """``||half - reference|| / ||reference||`` (inf when ``half`` is not finite)."""
    if not np.isfinite(half).all():
        return float("inf")
    norm = euclidean_norm(reference)
    difference = euclidean_norm(half - reference)
    return difference / norm if norm else (0.0 if difference == 0 else float("inf"))


def _span(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def _structured(outputs: list[Any]) -> Any:
    return outputs[0] if len(outputs) == 1 else outputs


def shadow(
    float32: keras.Model,
    half: keras.Model,
    batch: tuple[Any, Any],
    loss_fn: Any,
    dtype: str,
    shares: dict[str, float],
) -> ShadowResult:
    """Per-layer comparison of ``half`` against ``float32`` on ``batch`` in training mode, and the
    first inf/NaN of the half forward pass, else of its backward pass at loss scale 1."""
    x, y = batch
    with quiet_noise(float32, half):
        arguments32: dict[int, tuple] = {}
        with tf.GradientTape() as tape32:
            rows32, outputs32, outs32 = _forward(float32, x, arguments32)
            loss32_tensor = loss_fn(y, _structured([outputs32[i] for i in outs32]))
        grads32 = [dense_gradient(g) for g in tape32.gradient(loss32_tensor, outputs32)]
        acts32 = [a.numpy() for a in outputs32]
        with tf.GradientTape() as tape:
            rows16, acts16, outs16 = _forward(half, x)
            loss16 = loss_fn(y, _structured([acts16[i] for i in outs16]))
        variables = list(half.trainable_variables)
        grads = [dense_gradient(g) for g in tape.gradient(loss16, acts16 + variables)]
        twins = {twin.name: twin for twin, _ in rows16}
        # A graph model's layer is fed from its node; a subclassed model's layer gets the
        # arguments its float32 twin was recorded with.
        own = (
            own_outputs(float32, rows32, acts32, x, twins)
            if is_graph_model(float32)
            else recorded_own_outputs(rows32, arguments32, twins)
        )
    loss32 = float(loss32_tensor)
    acts16_np = [a.numpy() for a in acts16]

    half_rows = {layer.name: (layer, positions) for layer, positions in rows16}
    rows: list[LayerRow] = []
    first: NonFinite | None = None
    paired: list[tuple[Any, list[int]]] = []
    halves: list[list[int]] = []  # output positions of the layers computing in the half type
    for layer, positions in rows32:
        if layer.name not in half_rows:
            continue
        layer16, positions16 = half_rows[layer.name]
        paired.append((layer16, positions16))
        if _compute_dtype(layer16) == dtype:
            halves.append(positions)
        f, h = _joined(acts32, positions), _joined(acts16_np, positions16)
        if f is None or h is None:
            continue
        census = cast_census(f, dtype)
        finite = bool(np.isfinite(h).all())
        if not finite and first is None and np.isfinite(f).all():
            first = NonFinite(layer.name, "forward", 1.0, *_span(f))
        rows.append(
            LayerRow(
                name=layer.name,
                class_name=type(layer16).__name__,
                compute_dtype=_compute_dtype(layer16),
                variable_dtype=layer16.variable_dtype,
                flop_share=shares.get(layer.name, 0.0),
                amax=float(np.abs(f[np.isfinite(f)]).max()) if f.size else 0.0,
                overflow=census["overflow"],
                underflow=census["underflow"],
                relative_error=relative_error(h, f),
                finite=finite,
                own_error=relative_error(own[layer.name], f) if layer.name in own else None,
            )
        )
    if first is None:
        first = _first_backward(paired, grads, len(acts16), variables)
    out32, out16 = _joined(acts32, outs32), _joined(acts16_np, outs16)
    histograms = [
        Log2Histogram.of(np.asarray(grads32[i], dtype=np.float64))
        for positions in halves
        for i in positions
        if grads32[i] is not None and tf.as_dtype(grads32[i].dtype).is_floating
    ]
    return ShadowResult(
        rows=rows,
        loss_float32=loss32,
        loss_half=float(loss16),
        output_error=relative_error(out16, out32) if out32 is not None else 0.0,
        first_nonfinite=first,
        activation_gradients=Log2Histogram.merged(histograms) if histograms else None,
        activation_layers=len(halves),
    )


def _compute_dtype(layer: Any) -> str:
    if isinstance(layer, keras.Model):
        from mpcore.user.loader import compute_dtype_of

        return compute_dtype_of(layer)
    return layer.compute_dtype


def _first_backward(
    paired: list[tuple[Any, list[int]]], grads: list[Any], offset: int, variables: list[Any]
) -> NonFinite | None:
    """Walk the layers from the loss back to the input: the first whose output gradient, or
    weight gradient, holds inf/NaN."""
    index = {id(v): offset + i for i, v in enumerate(variables)}
    for layer, positions in reversed(paired):
        own = [grads[i] for i in positions]
        own += [grads[index[id(v)]] for v in layer.trainable_variables if id(v) in index]
        for gradient in own:
            if gradient is None:
                continue
            values = np.asarray(gradient).astype(np.float64)
            if not np.isfinite(values).all():
                return NonFinite(layer.name, "backward", 1.0, *_span(values))
    return None


def loss_scale_of(optimizer: Any, dtype: str) -> float:
    """The loss scale the first training step would use: a ``LossScaleOptimizer``'s current
    dynamic scale (its ``initial_scale`` before it has been built), or a static
    ``loss_scale_factor``, else 2**15 for float16 and 1 for bfloat16."""
    return loss_scale_source(optimizer, dtype)[0]


def loss_scale_source(optimizer: Any, dtype: str) -> tuple[float, str]:
    """:func:`loss_scale_of` and where it comes from, in words for the report."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scale = current_loss_scale(optimizer)
        if scale is not None:
            return scale, "the LossScaleOptimizer's current scale"
        return float(optimizer.initial_scale), "the LossScaleOptimizer's initial_scale"
    factor = getattr(optimizer, "loss_scale_factor", None) if optimizer is not None else None
    if factor:
        return float(factor), "the optimizer's fixed loss_scale_factor"
    if dtype == "float16":
        return DEFAULT_LOSS_SCALE, "Keras's default initial scale, no LossScaleOptimizer given"
    return 1.0, "bfloat16 needs no loss scaling"


def gradients(
    float32: keras.Model,
    batch: tuple[Any, Any],
    loss_fn: Any,
    dtype: str,
    optimizer: Any,
    passes: ShadowResult | None = None,
) -> tuple[dict[str, Any], LossScaleWindow]:
    """The gradient census at the optimizer's loss scale (see :func:`loss_scale_of`) and the
    loss-scale window derived from the census at scale 1, with the activation gradients of
    ``passes`` (the shadow comparison) where it has them."""
    scale, source = loss_scale_source(optimizer, dtype)
    # One forward and backward pass serves both scales.
    with quiet_noise(float32):
        at_scale, at_one = gradient_censuses(float32, batch, [scale, 1.0], dtype, loss_fn)
    census = at_scale.to_dict()
    census["overall_at_1"] = at_one.overall
    census["loss_scale_source"] = source
    if passes is None or passes.activation_gradients is None:
        return census, loss_scale_window(at_one)
    return census, loss_scale_window(
        at_one, passes.activation_gradients, f"{passes.activation_layers} layers'"
    )


def scaled_fractions(census: GradientCensus, exponent: int) -> tuple[float, float]:
    """(underflow, overflow) fractions of the non-zero gradients of ``census`` multiplied by
    ``2**exponent``, from its log2 histogram. A bin that reaches the format's overflow threshold
    counts as overflowing whole (the bins cannot tell 65504 from 65520 in float16), so overflow is
    never missed; below the flush limit the bins are exact but for values exactly on it."""
    fmt = float_format(census.dtype)
    exponents = np.asarray(census.histogram.exponents, dtype=np.int64) + exponent
    counts = np.asarray(census.histogram.counts, dtype=np.int64)
    total = max(int(counts.sum()), 1)
    zero_below = int(np.log2(fmt.underflow_limit))
    overflow_from = int(np.floor(np.log2(fmt.overflow_threshold)))
    under = int(counts[exponents < zero_below].sum())
    over = int(counts[exponents >= overflow_from].sum())
    return under / total, over / total


def loss_scale_window(
    census: GradientCensus, activations: Log2Histogram | None = None, layers: str = ""
) -> LossScaleWindow:
    """The :class:`LossScaleWindow` of the gradients in ``census`` (taken at loss scale 1) and,
    when given, of the ``activations``' gradients too (the half backward pass scales both)."""
    if census.loss_scale != 1.0:
        raise ValueError(
            f"loss_scale_window needs a census at loss scale 1, got {census.loss_scale}"
        )
    worst = max(census.per_variable, key=lambda v: v.census["underflow"], default=None)
    worst_name = worst.name.rsplit("/", 1)[0] if worst and worst.census["underflow"] else None
    based_on = "weight gradients"
    # Flushed without loss scaling: of the weight gradients, the census's own figure; the bounds
    # below consider the activation gradients too.
    underflow_at_1 = scaled_fractions(census, 0)[0] if sum(census.histogram.counts) else 0.0
    if activations is not None:
        histogram = Log2Histogram.merged([census.histogram, activations])
        census = dataclasses.replace(census, histogram=histogram)
        based_on = f"weight gradients and the {layers} activation gradients".replace("  ", " ")
    if not census.histogram.counts or not sum(census.histogram.counts):
        return LossScaleWindow(None, None, None, 0.0, False, None, [])
    fractions = {k: scaled_fractions(census, k) for k in SCALE_EXPONENTS}
    good = [k for k, (under, over) in fractions.items() if over == 0 and under < UNDERFLOW_LIMIT]
    finite = [k for k, (_, over) in fractions.items() if over == 0]
    settle = max(finite) if finite else None
    centre = settle if settle is not None else 0
    curve = [(k, *fractions[k]) for k in SCALE_EXPONENTS if abs(k - centre) <= 40]
    return LossScaleWindow(
        low=min(good) if good else None,
        high=max(good) if good else None,
        settle=settle,
        underflow_at_1=underflow_at_1,
        nonzero=True,
        worst_variable=worst_name,
        curve=curve,
        based_on=based_on,
    )
