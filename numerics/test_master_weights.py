"""Claim 6: mixed policies keep float32 master weights, so updates too small for float16 (or
bfloat16) arithmetic are not lost."""

from __future__ import annotations

import keras
import ml_dtypes
import numpy as np
import pytest

from mpcore.models.registry import build_model
from mpcore.precision.modes import RunConfig, applied

UPDATE = 2.0**-12


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_variables_stay_float32_under_mixed_policies_after_training(precision: str) -> None:
    """Every model variable (weights and batch-norm statistics) and every floating optimizer
    variable is float32 after a training step, while the layers compute in half precision."""
    rng = np.random.default_rng(0)
    with applied(RunConfig(precision)):
        model = build_model("small", 16)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            jit_compile=False,
        )
        images = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
        loss = model.train_on_batch(images, np.arange(4, dtype=np.int32))
        optimizer = model.optimizer  # compile wraps it in a LossScaleOptimizer for float16
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == (
        precision == "mixed_float16"
    )
    assert np.isfinite(loss) and int(optimizer.iterations.numpy()) == 1
    assert model.layers[1].compute_dtype == precision.removeprefix("mixed_")
    assert model.variables and all(v.dtype == "float32" for v in model.variables)
    floating = [v for v in optimizer.variables if "float" in v.dtype]
    assert len(floating) > 2 * len(model.trainable_variables)  # Adam's two moments, at least
    assert all(v.dtype == "float32" for v in floating)


@pytest.mark.parametrize(("half", "numpy_type"), [("float16", np.float16), ("bfloat16", None)])
def test_adding_2_pow_minus_12_to_one_is_lost_in_half_precision_arithmetic(
    half: str, numpy_type: type | None
) -> None:
    """1 + 2**-12 rounds back to 1 in float16 (spacing 2**-10 at 1) and bfloat16 (2**-7), in
    numpy/ml_dtypes arithmetic and in a Keras variable update on the backend alike; float32
    keeps it."""
    numpy_type = numpy_type or ml_dtypes.bfloat16
    assert numpy_type(1.0) + numpy_type(UPDATE) == numpy_type(1.0)
    variable = keras.Variable(np.asarray(1.0, numpy_type), dtype=half)
    variable.assign_add(keras.ops.convert_to_tensor(np.asarray(UPDATE, numpy_type)))
    assert variable.numpy() == 1.0
    assert np.float32(1.0) + np.float32(UPDATE) == 1.0 + UPDATE


def one_step_on_a_unit_weight(layer_dtype: str | None, precision: str) -> tuple[float, str]:
    """A one-weight linear model, weight 1.0, input 2**-12, loss -output: one SGD(1.0) step must
    add exactly 2**-12 to the weight. ``layer_dtype`` None takes the policy of ``precision``.
    Returns the new weight and its dtype."""
    with applied(RunConfig(precision)):
        inputs = keras.Input(shape=(1,), dtype=layer_dtype or "float32")
        layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", dtype=layer_dtype)
        model = keras.Model(inputs, layer(inputs))
        # compile wraps SGD in a LossScaleOptimizer exactly when the policy is mixed_float16.
        model.compile(
            optimizer=keras.optimizers.SGD(1.0),
            loss=lambda _, outputs: -keras.ops.sum(keras.ops.cast(outputs, "float32")),
            jit_compile=False,
        )
        model.train_on_batch(np.full((1, 1), UPDATE, inputs.dtype), np.zeros((1, 1), np.float32))
        return layer.kernel.numpy().item(), layer.kernel.dtype


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_an_all_half_precision_model_loses_the_update(half: str) -> None:
    """With half-precision variables (policy ``float16``/``bfloat16``) the weight stays 1.0."""
    value, dtype = one_step_on_a_unit_weight(half, "float32")
    assert dtype == half
    assert value == 1.0


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_the_mixed_policy_optimizer_step_keeps_the_update(precision: str) -> None:
    """Under the mixed policy the gradient 2**-12 (exact in either half type) is applied to the
    float32 master weight, which becomes exactly 1 + 2**-12."""
    value, dtype = one_step_on_a_unit_weight(None, precision)
    assert dtype == "float32"
    assert value == 1.0 + UPDATE
