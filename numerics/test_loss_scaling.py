"""Claim 2: float16 gradients underflow without loss scaling and loss scaling cures it.

The model is 15 stacked one-unit sigmoid layers with kernels of ones (``helpers``): the first
kernel's float32 gradient is about 2**-32, below float16's smallest subnormal 2**-24. The same
A/B runs through mpcore's custom training step (a ``tf.function``: TensorFlow-only) and through
``compile(auto_scale_loss=...)`` (every Keras backend).
"""

from __future__ import annotations

import math

import pytest

from numerics.helpers import SIGMOID_DEPTH, first_kernel_step

ROUTES = (pytest.param("custom_step", marks=pytest.mark.tensorflow_only), "compile")
FLOAT16_UNIT_ROUNDOFF = 2.0**-11
#: First-order error bound of the float16 step relative to float32: per layer the activation, its
#: sigmoid derivative y(1 - y) (where 1 - y ~ y / 2, so its rounding error doubles) and the
#: backward product are each rounded once: about 4 roundings per layer. Measured: 1.4%.
FLOAT16_RELATIVE_TOLERANCE = SIGMOID_DEPTH * 4 * FLOAT16_UNIT_ROUNDOFF  # ~2.9%


@pytest.fixture(scope="module")
def float32_gradient() -> float:
    """The float32 reference (no loss scaling needed): the gradient the first kernel gets."""
    outcome = first_kernel_step("float32", "compile", loss_scaling=False)
    assert not outcome.loss_scale_optimizer
    return outcome.applied_gradient


def test_the_float32_reference_gradient_is_below_float16_range(float32_gradient: float) -> None:
    """The case is built as claimed: non-zero in float32, under 2**-25 (so float16 rounds it to
    zero), and inside float16's range (above 2**-24) once multiplied by the default scale 2**15."""
    assert 0 < float32_gradient < 2**-25
    assert float32_gradient * 2**15 > 2**-24


@pytest.mark.parametrize("route", ROUTES)
def test_mixed_float16_without_loss_scaling_leaves_the_first_kernel_exactly_unchanged(
    route: str,
) -> None:
    """Without loss scaling the float16 backward pass flushes the gradient to zero, so even a
    learning rate of 2**30 does not move the first kernel: the update is exactly 0."""
    outcome = first_kernel_step("mixed_float16", route, loss_scaling=False)
    assert not outcome.loss_scale_optimizer
    assert outcome.applied_gradient == 0.0


@pytest.mark.parametrize("route", ROUTES)
def test_mixed_float16_with_loss_scaling_matches_the_float32_update(
    route: str, float32_gradient: float
) -> None:
    """With a LossScaleOptimizer (scale 2**15) the first kernel moves, and the applied gradient
    matches float32's within the stated float16 error bound."""
    outcome = first_kernel_step("mixed_float16", route, loss_scaling=True)
    assert outcome.loss_scale_optimizer
    assert outcome.applied_gradient != 0.0
    assert math.isclose(
        outcome.applied_gradient, float32_gradient, rel_tol=FLOAT16_RELATIVE_TOLERANCE
    )
