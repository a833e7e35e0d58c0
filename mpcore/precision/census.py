"""What a cast to a narrow float format does to a set of values, and to a model's gradients.

The formats are the half-precision ones of mixed precision (float16, bfloat16) and the two FP8
formats of float8 training (``float8_e4m3fn`` for forward tensors, ``float8_e5m2`` for
gradients). :func:`cast_census` classifies values by the round-to-nearest-even result of a cast
(zero, subnormal, overflow) from exact thresholds derived from the format, without casting, so
tests can check it against real casts.

Overflow is not the same in every format. float16, bfloat16 and E5M2 are IEEE-like: a magnitude
at or beyond half an ulp past the largest finite value rounds to infinity. E4M3FN ("finite, NaN")
has no infinity: its top exponent holds normal numbers up to 448 and one NaN pattern, so a cast
beyond 464 (448 plus half its ulp of 32) gives NaN, and 464 itself, a tie, rounds to the even
448. Keras never casts out of range: ``keras.quantizers.quantize_and_dequantize`` divides by the
scale and clips to +-``finfo(dtype).max`` before the cast, i.e. it saturates at 448 (or 57344);
the census counts what a plain cast would do.

:func:`gradient_census` applies the census to a model's float32 gradients multiplied by a loss
scale and adds the log2-magnitude histogram behind Figure 3 of Micikevicius et al., "Mixed
Precision Training" (ICLR 2018), which :mod:`mpcore.precision.census_plot` draws.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import keras
import ml_dtypes
import numpy as np

from mpcore.probe import backend
from mpcore.probe.backend import tf

#: The narrow formats a census can target.
CAST_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")

_NUMPY_DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}
#: Formats without an infinity: an out-of-range cast gives NaN (see the module docstring).
_FINITE_ONLY = frozenset({"float8_e4m3fn"})


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """The magnitudes that decide where a round-to-nearest-even cast lands.

    Ties round to the even neighbour. A tie at ``underflow_limit`` goes to zero (0 is even) and a
    tie at ``normal_threshold`` goes up (the largest subnormal is odd). At
    ``overflow_threshold`` it depends on the format: the largest finite value of float16,
    bfloat16 and E5M2 is odd, so the tie overflows to infinity (``overflow_tie_rounds_up``);
    E4M3FN's largest value 448 is even (its odd neighbour 480 is the NaN pattern), so only
    magnitudes strictly beyond 464 overflow, to NaN (``overflow_value``).
    """

    name: str
    smallest_subnormal: float
    smallest_normal: float
    largest: float
    overflow_threshold: float
    overflow_tie_rounds_up: bool = True
    overflow_value: str = "inf"

    @property
    def underflow_limit(self) -> float:
        """Magnitudes at or below this round to zero (half the smallest subnormal)."""
        return self.smallest_subnormal / 2

    @property
    def normal_threshold(self) -> float:
        """Magnitudes at or above this round to a normal number."""
        return self.smallest_normal - self.smallest_subnormal / 2


@functools.cache
def float_format(dtype: str) -> FloatFormat:
    """The :class:`FloatFormat` of a name in :data:`CAST_DTYPES`; ``ValueError`` otherwise."""
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"unknown cast dtype {dtype!r}; valid: {', '.join(CAST_DTYPES)}")
    info = ml_dtypes.finfo(_NUMPY_DTYPES[dtype])
    # The spacing of the largest binade; half of it past the largest value rounds to infinity.
    # Every value here is a power of two or a short binary fraction, so float64 holds it exactly.
    largest_ulp = 2.0 ** (info.maxexp - 1 - info.nmant)
    finite_only = dtype in _FINITE_ONLY
    return FloatFormat(
        name=dtype,
        smallest_subnormal=float(info.smallest_subnormal),
        smallest_normal=float(info.smallest_normal),
        largest=float(info.max),
        overflow_threshold=float(info.max) + largest_ulp / 2,
        overflow_tie_rounds_up=not finite_only,
        overflow_value="nan" if finite_only else "inf",
    )


def _float_array(values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind != "f" and array.dtype not in _NUMPY_DTYPES.values():
        raise TypeError(
            f"cast_census needs floating-point values (float16/32/64, bfloat16 or float8), "
            f"got dtype {array.dtype}"
        )
    # Comparisons against the thresholds are exact in float64 for every narrower input; wider
    # inputs (long double) are compared in their own type.
    return array.astype(np.float64, copy=False) if array.dtype.itemsize <= 8 else array


def cast_counts(values: Any, dtype: str) -> dict[str, int]:
    """The numbers behind :func:`cast_census`: how many of the finite non-zero ``values`` a cast
    to ``dtype`` makes zero, subnormal or not finite, and how many there are (``count``).
    Counts add up across arrays, so a census of many arrays need not join them first."""
    fmt = float_format(dtype)
    magnitudes = np.abs(_float_array(values)).ravel()
    magnitudes = magnitudes[np.isfinite(magnitudes) & (magnitudes != 0)]
    beyond = (
        magnitudes >= fmt.overflow_threshold
        if fmt.overflow_tie_rounds_up
        else magnitudes > fmt.overflow_threshold
    )
    return {
        "underflow": int(np.count_nonzero(magnitudes <= fmt.underflow_limit)),
        "subnormal": int(
            np.count_nonzero(
                (magnitudes > fmt.underflow_limit) & (magnitudes < fmt.normal_threshold)
            )
        ),
        "overflow": int(np.count_nonzero(beyond)),
        "count": int(magnitudes.size),
    }


def _fractions(counts: dict[str, int]) -> dict[str, float]:
    denominator = max(counts["count"], 1)
    return {
        "underflow": counts["underflow"] / denominator,
        "subnormal": counts["subnormal"] / denominator,
        "overflow": counts["overflow"] / denominator,
        "count": counts["count"],
    }


def cast_census(values: Any, dtype: str) -> dict[str, float]:
    """Fractions of the finite non-zero ``values`` that a cast to ``dtype`` makes zero
    (``underflow``), subnormal and non-zero (``subnormal``) or not finite (``overflow``: infinite,
    or NaN for E4M3FN), and their number (``count``). NaN, infinities and zeros are left out; with
    nothing left every fraction is 0.0. Raises ``TypeError`` for non-float input, ``ValueError``
    for an unknown ``dtype``. The census is of a plain cast: it does not apply the clipping with
    which Keras's float8 layers saturate instead of overflowing.
    """
    return _fractions(cast_counts(values, dtype))


@dataclasses.dataclass(frozen=True)
class Log2Histogram:
    """Counts of magnitudes per power of two: ``counts[i]`` values have
    ``2**exponents[i] <= |v| < 2**(exponents[i] + 1)``; zeros and NaN/inf are counted apart."""

    exponents: list[int]
    counts: list[int]
    zeros: int
    nonfinite: int

    @classmethod
    def of(cls, values: np.ndarray) -> Log2Histogram:
        values = np.asarray(values, dtype=np.float64).ravel()
        finite = values[np.isfinite(values)]
        nonzero = np.abs(finite[finite != 0])
        if nonzero.size == 0:
            exponents: list[int] = []
            counts: list[int] = []
        else:
            # frexp gives |v| = m * 2**e with 0.5 <= m < 1 exactly, so floor(log2|v|) = e - 1
            # with no rounding at the bin edges.
            floor_log2 = np.frexp(nonzero)[1].astype(np.int64) - 1
            low, high = int(floor_log2.min()), int(floor_log2.max())
            exponents = list(range(low, high + 1))
            counts = np.bincount(floor_log2 - low, minlength=high - low + 1).tolist()
        return cls(
            exponents=exponents,
            counts=counts,
            zeros=int(finite.size - nonzero.size),
            nonfinite=int(values.size - finite.size),
        )

    @property
    def total(self) -> int:
        return sum(self.counts) + self.zeros + self.nonfinite

    @classmethod
    def merged(cls, histograms: Sequence[Log2Histogram]) -> Log2Histogram:
        """One histogram of the values of all of ``histograms``."""
        counts: dict[int, int] = {}
        for histogram in histograms:
            for exponent, count in zip(histogram.exponents, histogram.counts, strict=True):
                counts[exponent] = counts.get(exponent, 0) + count
        exponents = list(range(min(counts), max(counts) + 1)) if counts else []
        return cls(
            exponents=exponents,
            counts=[counts.get(e, 0) for e in exponents],
            zeros=sum(h.zeros for h in histograms),
            nonfinite=sum(h.nonfinite for h in histograms),
        )


@dataclasses.dataclass(frozen=True)
class VariableCensus:
    """The cast census of one variable's scaled gradient."""

    name: str
    shape: list[int]
    census: dict[str, float]


@dataclasses.dataclass(frozen=True)
class GradientCensus:
    """What casting a model's loss-scaled float32 gradients to ``dtype`` would do."""

    dtype: str
    loss_scale: float
    loss: float
    overall: dict[str, float]
    per_variable: list[VariableCensus]
    histogram: Log2Histogram

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (plain lists, dicts, numbers and strings)."""
        return dataclasses.asdict(self)


def _model_loss(model: keras.Model) -> Callable[..., tf.Tensor]:
    if not model.compiled:
        raise ValueError(
            f"model {model.name} is not compiled: compile it or pass loss_fn to gradient_census"
        )

    def compiled_loss(labels: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
        return model.compute_loss(y=labels, y_pred=predictions)

    return compiled_loss


def _loss_and_gradients(
    model: keras.Model, loss_of: Callable[..., Any], inputs: Any, labels: Any
) -> tuple[Any, list[Any]]:
    """The training-mode loss and its gradients for ``model.trainable_variables``, by the
    backend's own differentiation (a tape, ``jax.grad``, torch autograd)."""
    variables = model.trainable_variables
    name = backend.name()
    if name == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_from(trainable: list[Any]) -> Any:
            predictions, _ = model.stateless_call(trainable, non_trainable, inputs, training=True)
            with keras.StatelessScope():  # a compiled loss may update its trackers: discarded
                return loss_of(labels, predictions)

        loss, gradients = jax.value_and_grad(loss_from)([v.value for v in variables])
        return loss, list(gradients)
    if name == "torch":
        import torch

        loss = loss_of(labels, model(inputs, training=True))
        values = [v.value for v in variables]
        gradients = torch.autograd.grad(loss, values, allow_unused=True)
        return loss.detach(), [None if g is None else g.detach().cpu() for g in gradients]
    with tf.GradientTape() as tape:
        loss = loss_of(labels, model(inputs, training=True))
    return loss, [dense_gradient(g) for g in tape.gradient(loss, variables)]


def dense_gradient(gradient: Any) -> Any:
    """``gradient`` as a dense tensor: an Embedding's gradient is ``tf.IndexedSlices`` (the rows
    a batch touched); the rows it leaves out are exact zeros, as the census counts them."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def gradient_census(
    model: keras.Model,
    batch: Sequence[Any],
    loss_scale: float = 1.0,
    dtype: str = "float16",
    loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
) -> GradientCensus:
    """Census of ``loss_scale`` times the float32 gradients of ``model``'s loss on ``batch``.

    ``batch`` is ``(inputs, labels)``. The loss is ``loss_fn(labels, predictions)`` or, when
    ``loss_fn`` is None, the model's compiled loss. The model must compute in float32 (build it
    under the float32 policy): the census asks what a cast would lose, so the gradients must not
    have been through one already. The forward pass runs in training mode, as in a training
    step; non-trainable state it updates (batch-norm statistics) is put back afterwards.
    """
    return gradient_censuses(model, batch, [loss_scale], dtype, loss_fn)[0]


def gradient_censuses(
    model: keras.Model,
    batch: Sequence[Any],
    loss_scales: Sequence[float],
    dtype: str = "float16",
    loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
) -> list[GradientCensus]:
    """:func:`gradient_census` at each of ``loss_scales``, in that order, from one forward and
    backward pass: the gradients do not depend on the scale (it multiplies them in float64,
    after the pass), so a census at several scales costs one pass, not one per scale."""
    float_format(dtype)
    for loss_scale in loss_scales:
        if not (np.isfinite(loss_scale) and loss_scale > 0):
            raise ValueError(f"loss_scale must be a positive finite number, got {loss_scale}")
    low_precision = sorted(
        {layer.compute_dtype for layer in model.layers if layer.compute_dtype != "float32"}
    )
    if low_precision:
        raise ValueError(
            f"gradient_census needs a float32 model; {model.name} computes in "
            f"{', '.join(low_precision)} (build it under the float32 policy)"
        )
    if len(batch) != 2:
        raise ValueError(f"batch must be (inputs, labels), got {len(batch)} items")
    inputs, labels = batch
    loss_of = loss_fn or _model_loss(model)
    variables = model.trainable_variables
    saved_state = [variable.numpy() for variable in model.non_trainable_variables]
    try:
        loss, gradients = _loss_and_gradients(model, loss_of, inputs, labels)
    finally:
        for variable, value in zip(model.non_trainable_variables, saved_state, strict=True):
            variable.assign(value)
    unscaled = [
        np.zeros(tuple(v.shape)) if g is None else np.asarray(g, dtype=np.float64)
        for g, v in zip(gradients, variables, strict=True)
    ]
    # A scale asked for twice (check asks for the optimizer's and 1, often one and the same)
    # is counted once.
    censuses = {
        float(s): _census_of(variables, unscaled, float(s), dtype, float(loss))
        for s in dict.fromkeys(loss_scales)
    }
    return [censuses[float(s)] for s in loss_scales]


def _census_of(
    variables: Sequence[Any], unscaled: list[np.ndarray], loss_scale: float, dtype: str, loss: float
) -> GradientCensus:
    per_variable, histograms = [], []
    totals = {"underflow": 0, "subnormal": 0, "overflow": 0, "count": 0}
    for variable, gradient in zip(variables, unscaled, strict=True):
        # float64 so that the product neither overflows nor rounds before the census looks at it.
        scaled = gradient * loss_scale
        counts = cast_counts(scaled, dtype)
        for key, value in counts.items():
            totals[key] += value
        per_variable.append(
            VariableCensus(variable.path, [int(n) for n in variable.shape], _fractions(counts))
        )
        histograms.append(Log2Histogram.of(scaled))
    # Counts and histogram bins add up across variables: the same numbers as a census of all the
    # gradients joined, without building that 8-bytes-a-value copy.
    return GradientCensus(
        dtype=dtype,
        loss_scale=loss_scale,
        loss=loss,
        overall=_fractions(totals),
        per_variable=per_variable,
        histogram=Log2Histogram.merged(histograms),
    )
