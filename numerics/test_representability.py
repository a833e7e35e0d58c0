"""Claim 1: where float16 and bfloat16 overflow, go subnormal and underflow, exactly, and that
``cast_census`` agrees with real round-to-nearest-even casts (numpy, ml_dtypes, and the Keras
backend's own: TensorFlow, JAX or torch)."""

from __future__ import annotations

import math

import keras
import ml_dtypes
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mpcore.precision.census import CAST_DTYPES, cast_census, float_format

NUMPY_TYPE = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}


def oracle_census(values: np.ndarray, dtype: str) -> dict[str, float]:
    """The census computed the slow way: cast for real, then look at what came out."""
    values = np.asarray(values, dtype=np.float32).ravel()
    values = values[np.isfinite(values) & (values != 0)]
    with np.errstate(over="ignore"):
        cast = values.astype(NUMPY_TYPE[dtype]).astype(np.float64)
    smallest_normal = float(ml_dtypes.finfo(NUMPY_TYPE[dtype]).smallest_normal)
    count = values.size
    denominator = max(count, 1)
    return {
        "underflow": np.count_nonzero(cast == 0) / denominator,
        "subnormal": np.count_nonzero((cast != 0) & (np.abs(cast) < smallest_normal)) / denominator,
        # Finite inputs only, so a non-finite result is an overflow: inf, or NaN for E4M3FN.
        "overflow": np.count_nonzero(~np.isfinite(cast)) / denominator,
        "count": count,
    }


def backend_cast(values: object, dtype: str, source: str = "float32") -> np.ndarray:
    """``values`` as ``source`` tensors of the Keras backend, cast to ``dtype`` by the backend,
    then widened back to float32 by the backend (exact for every format here): torch cannot hand
    a float8 tensor to numpy."""
    tensor = keras.ops.convert_to_tensor(np.asarray(values, source))
    return keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(tensor, dtype), "float32"))


def float16_via_tensorflow(values: list[float]) -> np.ndarray:
    """The backend's float32 -> float16 cast (``tf.cast`` on TensorFlow)."""
    return backend_cast(values, "float16")


def test_float16_largest_finite_is_65504_and_65520_is_the_overflow_boundary() -> None:
    """65504 is float16's largest value; 65519 rounds down to it, 65520 (the tie) rounds to inf."""
    assert np.finfo(np.float16).max == 65504
    values = [65504, 65519, 65520]
    with np.errstate(over="ignore"):
        by_numpy = np.float32(values).astype(np.float16)
    for cast in (by_numpy, float16_via_tensorflow(values)):
        assert cast[0] == cast[1] == 65504 and np.isposinf(cast[2])
    assert cast_census(np.float32([65519, -65519]), "float16")["overflow"] == 0.0
    assert cast_census(np.float32([65520, -65520]), "float16")["overflow"] == 1.0
    assert float_format("float16").overflow_threshold == 65520


def test_float16_smallest_subnormal_is_2_pow_minus_24_and_2_pow_minus_25_underflows() -> None:
    """2**-24 is float16's smallest subnormal; 2**-25 (the tie) rounds to 0, anything above it
    rounds up to 2**-24."""
    just_above = float(np.nextafter(np.float32(2**-25), np.float32(1)))
    values = [2**-24, 2**-25, just_above]
    assert np.finfo(np.float16).smallest_subnormal == 2**-24
    for cast in (np.float32(values).astype(np.float16), float16_via_tensorflow(values)):
        assert cast.tolist() == [2**-24, 0.0, 2**-24]
    assert cast_census(np.float32([2**-25]), "float16") == {
        "underflow": 1.0,
        "subnormal": 0.0,
        "overflow": 0.0,
        "count": 1,
    }
    assert cast_census(np.float32([just_above, 2**-24]), "float16")["subnormal"] == 1.0


def test_tensorflow_guide_examples_overflow_and_underflow_in_float16() -> None:
    """The TensorFlow mixed-precision guide's examples: 256**2 overflows and 1e-5**2 underflows
    in float16, while both are fine in float32."""

    def squared(value: float, dtype: str) -> float:
        tensor = keras.ops.convert_to_tensor(np.asarray(value, dtype))
        return float(keras.ops.convert_to_numpy(keras.ops.multiply(tensor, tensor)))

    assert np.isposinf(squared(256, "float16"))
    assert squared(1e-5, "float16") == 0
    assert squared(256, "float32") == 65536
    assert squared(1e-5, "float32") == pytest.approx(1e-10, rel=1e-6)
    assert cast_census(np.float32([256.0**2]), "float16")["overflow"] == 1.0
    assert cast_census(np.float32([1e-5**2]), "float16")["underflow"] == 1.0


def test_bfloat16_keeps_1e_minus_30_but_rounds_1_plus_2_pow_minus_8_to_1() -> None:
    """bfloat16 has float32's range (1e-30 stays non-zero, where float16 gives 0) but 8 bits of
    precision: 1 + 2**-8 is a tie that rounds to 1, while 1 + 2**-7 is representable."""
    assert backend_cast([1e-30], "bfloat16")[0] != 0
    assert float(np.float32(1e-30).astype(ml_dtypes.bfloat16)) == pytest.approx(1e-30, rel=2**-8)
    assert backend_cast([1e-30], "float16")[0] == 0

    def one_plus(value: float) -> float:
        one, step = (
            keras.ops.convert_to_tensor(np.asarray(v, ml_dtypes.bfloat16)) for v in (1, value)
        )
        total = keras.ops.add(one, step)  # in bfloat16; float32 holds it exactly, for reading
        return float(keras.ops.convert_to_numpy(keras.ops.cast(total, "float32")))

    assert one_plus(2**-8) == 1
    assert one_plus(2**-7) == 1 + 2**-7
    assert cast_census(np.float32([1e-30]), "bfloat16") == {
        "underflow": 0.0,
        "subnormal": 0.0,
        "overflow": 0.0,
        "count": 1,
    }
    assert cast_census(np.float32([1e-30]), "float16")["underflow"] == 1.0


@pytest.mark.parametrize(
    ("dtype", "low_exponent", "high_exponent"),
    [
        ("float16", -40, 20),  # crosses all three float16 boundaries
        ("bfloat16", -40, 20),  # inside bfloat16's range: nothing may be lost
        ("bfloat16", -149, 128),  # float32's whole range: crosses all three bfloat16 boundaries
    ],
)
def test_cast_census_agrees_with_real_casts_on_log_uniform_data(
    dtype: str, low_exponent: int, high_exponent: int
) -> None:
    """On 200,000 signed log-uniform float32 values, ``cast_census`` gives exactly the fractions
    a real cast (numpy for float16, ml_dtypes for bfloat16) produces."""
    rng = np.random.default_rng(20180215)
    exponents = rng.uniform(low_exponent, high_exponent, 200_000)
    signs = rng.choice([-1.0, 1.0], exponents.size)
    with np.errstate(over="ignore"):
        values = (signs * np.exp2(exponents)).astype(np.float32)
    census = cast_census(values, dtype)
    assert census == oracle_census(values, dtype)
    crosses_boundaries = not (dtype == "bfloat16" and high_exponent == 20)
    populated = [census[key] > 0 for key in ("underflow", "subnormal", "overflow")]
    assert all(populated) if crosses_boundaries else not any(populated)


@pytest.mark.parametrize("dtype", CAST_DTYPES)
def test_tensorflow_casts_round_exactly_like_numpy_and_ml_dtypes(dtype: str) -> None:
    """The backend's cast from float32 (``tf.cast`` on TensorFlow) gives bit-for-bit the values of
    the numpy (float16) and ml_dtypes (bfloat16, float8) casts, over float32's whole range, so the
    census describes what the backend does."""
    rng = np.random.default_rng(7)
    values = (rng.choice([-1.0, 1.0], 100_000) * np.exp2(rng.uniform(-149, 128, 100_000))).astype(
        np.float32
    )
    if dtype == "float8_e4m3fn" and keras.backend.backend() == "torch":
        # E4M3FN has no infinity: beyond it, TensorFlow, JAX and ml_dtypes give NaN, while
        # torch's cast saturates to +-448 (measured here with torch 2.13), as Keras's own float8
        # quantizer does by clipping first.
        values = np.clip(values, -448.0, 448.0)
    with np.errstate(over="ignore"):
        expected = values.astype(NUMPY_TYPE[dtype]).astype(np.float32)
    got = backend_cast(values, dtype).astype(np.float32)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", CAST_DTYPES)
def test_cast_census_agrees_with_real_casts_at_every_boundary_and_its_neighbours(
    dtype: str,
) -> None:
    """Each threshold and the float32 values either side of it land where the real cast puts
    them, for both signs."""
    fmt = float_format(dtype)
    thresholds = [fmt.underflow_limit, fmt.normal_threshold, fmt.overflow_threshold]
    for threshold in thresholds:
        centre = np.float32(threshold)
        assert float(centre) == threshold, "thresholds must be exact float32 values"
        for value in (np.nextafter(centre, np.float32(0)), centre, np.nextafter(centre, np.inf)):
            for signed in (value, -value):
                values = np.float32([signed])
                assert cast_census(values, dtype) == oracle_census(values, dtype), float(signed)


@settings(max_examples=300, deadline=None, database=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
@example(2.0**-25)
@example(65520.0)
@example(float(np.float32(2**-14 - 2**-25)))
def test_cast_census_agrees_with_real_casts_for_any_float32(value: float) -> None:
    """For any single finite float32, every dtype: census and real cast agree."""
    values = np.float32([value])
    for dtype in CAST_DTYPES:
        assert cast_census(values, dtype) == oracle_census(values, dtype)


def test_cast_census_ignores_nan_infinities_and_zeros() -> None:
    """Only finite non-zero inputs are counted; NaN, +-inf, 0 and -0 change nothing."""
    clean = np.float32([1.0, 2**-30, 1e6])
    noisy = np.float32([np.nan, 1.0, np.inf, 0.0, 2**-30, -np.inf, -0.0, 1e6, np.nan])
    assert cast_census(noisy, "float16") == cast_census(clean, "float16")
    assert cast_census(noisy, "float16") == {
        "underflow": 1 / 3,
        "subnormal": 0.0,
        "overflow": 1 / 3,
        "count": 3,
    }


@pytest.mark.parametrize("values", [np.zeros(0, np.float32), np.zeros((4, 5), np.float32)])
@pytest.mark.parametrize("dtype", CAST_DTYPES)
def test_cast_census_of_empty_or_all_zero_input_is_zero_fractions(
    values: np.ndarray, dtype: str
) -> None:
    """Nothing to count gives fractions of 0.0 and count 0, not a division by zero."""
    census = cast_census(values, dtype)
    assert census == {"underflow": 0.0, "subnormal": 0.0, "overflow": 0.0, "count": 0}
    assert all(isinstance(census[key], float) for key in ("underflow", "subnormal", "overflow"))


@pytest.mark.parametrize(
    "values",
    [np.arange(5), np.array([True, False]), [1, 2, 3], np.array(["1.0"]), np.array([1 + 2j])],
    ids=["int", "bool", "int-list", "str", "complex"],
)
def test_cast_census_rejects_non_float_input_with_type_error(values: object) -> None:
    with pytest.raises(TypeError, match="floating-point"):
        cast_census(values, "float16")


def test_cast_census_rejects_an_unknown_dtype_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="float16, bfloat16"):
        cast_census(np.float32([1.0]), "float8")


def test_cast_census_accepts_float64_and_bfloat16_input_exactly() -> None:
    """Wider and narrower float inputs are classified from their exact values."""
    wide = np.float64([2**-25, math.nextafter(2**-25, 1.0), 65519.99, 65520.0])
    assert cast_census(wide, "float16") == {
        "underflow": 0.25,
        "subnormal": 0.25,
        "overflow": 0.25,
        "count": 4,
    }
    narrow = np.float32([1e-30, 3e38]).astype(ml_dtypes.bfloat16)
    assert cast_census(narrow, "float16") == {
        "underflow": 0.5,
        "subnormal": 0.0,
        "overflow": 0.5,
        "count": 2,
    }
