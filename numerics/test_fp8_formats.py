"""FP8 claim 1: E4M3 resolves finer than E5M2 (3 vs 2 mantissa bits) and E5M2 reaches further
(57344 vs 448; smallest subnormals 2**-16 vs 2**-9), and ``cast_census`` agrees with ml_dtypes
casts to both formats at every boundary and on 10**6 random values.

ml_dtypes converts float64 through float32, so the comparisons use float32 inputs (every
boundary below is an exact float32 value, and its float32 neighbours are checked with it).
"""

from __future__ import annotations

import keras
import ml_dtypes
import numpy as np
import pytest

from mpcore.precision.census import cast_census, float_format

FP8 = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}


def cast(values: list[float], dtype: str) -> list[float]:
    """The real cast: float32 values through ml_dtypes, back to Python floats."""
    return np.float32(values).astype(FP8[dtype]).astype(np.float64).tolist()


def real_census(values: np.ndarray, dtype: str) -> dict[str, float]:
    """The census the slow way: cast, then see what came out (NaN or inf is an overflow)."""
    values = np.asarray(values, np.float32).ravel()
    values = values[np.isfinite(values) & (values != 0)]
    out = values.astype(FP8[dtype]).astype(np.float64)
    normal = float(ml_dtypes.finfo(FP8[dtype]).smallest_normal)
    denominator = max(values.size, 1)
    return {
        "underflow": np.count_nonzero(out == 0) / denominator,
        "subnormal": np.count_nonzero((out != 0) & (np.abs(out) < normal)) / denominator,
        "overflow": np.count_nonzero(~np.isfinite(out)) / denominator,
        "count": values.size,
    }


@pytest.mark.parametrize(
    ("dtype", "largest", "smallest_normal", "smallest_subnormal", "overflow_at"),
    [
        ("float8_e4m3fn", 448.0, 2.0**-6, 2.0**-9, 464.0),
        ("float8_e5m2", 57344.0, 2.0**-14, 2.0**-16, 61440.0),
    ],
)
def test_the_formats_limits_are_powers_of_two_from_their_bits(
    dtype: str, largest: float, smallest_normal: float, smallest_subnormal: float, overflow_at
) -> None:
    """E4M3: largest 1.75 * 2**8, min normal 2**-6, min subnormal 2**-6 * 2**-3; E5M2: largest
    1.75 * 2**15, min normal 2**-14, min subnormal 2**-14 * 2**-2. The format object agrees."""
    info = ml_dtypes.finfo(FP8[dtype])
    assert (float(info.max), float(info.smallest_normal)) == (largest, smallest_normal)
    assert float(info.smallest_subnormal) == smallest_subnormal
    fmt = float_format(dtype)
    assert (fmt.largest, fmt.smallest_normal, fmt.smallest_subnormal) == (
        largest,
        smallest_normal,
        smallest_subnormal,
    )
    assert fmt.overflow_threshold == overflow_at
    assert fmt.underflow_limit == smallest_subnormal / 2


def test_e4m3_resolves_one_eighth_where_e5m2_rounds_to_a_quarter() -> None:
    """Above 1 the spacing is 2**-3 in E4M3 and 2**-2 in E5M2: 1.125 and 1.375 are exact in
    E4M3, while E5M2 rounds the ties 1.125 -> 1 and 1.375 -> 1.5 to the even neighbour."""
    assert cast([1.125, 1.375, 1.25], "float8_e4m3fn") == [1.125, 1.375, 1.25]
    assert cast([1.125, 1.375, 1.25], "float8_e5m2") == [1.0, 1.5, 1.25]
    # The relative step of a normal number: 2**-nmant.
    assert ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).eps == 2.0**-3
    assert ml_dtypes.finfo(ml_dtypes.float8_e5m2).eps == 2.0**-2


def test_e5m2_reaches_57344_and_2_pow_minus_16_where_e4m3_gives_nan_and_zero() -> None:
    """512 and 2**14 are exact in E5M2 but NaN in E4M3FN (no infinity); 2**-12 and 2**-16 are
    exact in E5M2 but 0 in E4M3, whose smallest subnormal is 2**-9."""
    values = [512.0, 2.0**14, 57344.0, 2.0**-12, 2.0**-16]
    assert cast(values, "float8_e5m2") == values
    e4m3 = cast(values, "float8_e4m3fn")
    assert np.isnan(e4m3[:3]).all() and e4m3[3:] == [0.0, 0.0]
    assert cast_census(np.float32(values), "float8_e4m3fn")["overflow"] == 3 / 5
    assert cast_census(np.float32(values), "float8_e4m3fn")["underflow"] == 2 / 5
    assert cast_census(np.float32(values), "float8_e5m2")["overflow"] == 0.0


def test_e4m3fn_rounds_the_tie_464_down_to_448_and_anything_above_to_nan() -> None:
    """448 = 1.110b * 2**8 has an even significand and its odd neighbour 1.111b * 2**8 is the NaN
    pattern, so the tie 464 rounds to 448; the next float32 above 464 is NaN. E5M2 follows IEEE:
    the tie 61440 is infinity."""
    above = float(np.nextafter(np.float32(464), np.float32(np.inf)))
    assert cast([463.0, 464.0], "float8_e4m3fn") == [448.0, 448.0]
    assert np.isnan(cast([above, 1e4, -1e4], "float8_e4m3fn")).all()
    assert cast_census(np.float32([464.0]), "float8_e4m3fn")["overflow"] == 0.0
    assert cast_census(np.float32([above]), "float8_e4m3fn")["overflow"] == 1.0
    assert cast([61440.0], "float8_e5m2") == [np.inf]
    assert float_format("float8_e4m3fn").overflow_value == "nan"
    assert float_format("float8_e5m2").overflow_value == "inf"


def test_keras_saturates_at_the_format_maximum_instead_of_casting_out_of_range() -> None:
    """``keras.quantizers.quantize_and_dequantize`` (used by the float8 Dense and EinsumDense
    layers) clips ``x / scale`` to +-finfo.max before the cast: 1000 and -10**6 become +-448 in
    E4M3 and -10**6 becomes -57344 in E5M2 (1000 rounds to 1024 there), where a plain cast gives
    NaN and -inf."""
    values = np.float32([1000.0, -1e6, 3.0])
    e4m3 = keras.quantizers.quantize_and_dequantize(values, 1.0, "float8_e4m3fn", "float32")
    e5m2 = keras.quantizers.quantize_and_dequantize(values, 1.0, "float8_e5m2", "float32")
    assert keras.ops.convert_to_numpy(e4m3).tolist() == [448.0, -448.0, 3.0]
    assert keras.ops.convert_to_numpy(e5m2).tolist() == [1024.0, -57344.0, 3.0]
    assert np.isnan(cast([1000.0], "float8_e4m3fn")[0])
    assert cast([-1e6], "float8_e5m2") == [-np.inf]


def boundary_values(dtype: str) -> np.ndarray:
    """Max, min normal, min subnormal, half the min subnormal (the underflow tie), the ties
    between the subnormal and normal ranges and past the max, each with its float32 neighbours,
    both signs."""
    fmt = float_format(dtype)
    centres = [
        fmt.largest,
        fmt.overflow_threshold,
        fmt.smallest_normal,
        fmt.normal_threshold,
        fmt.smallest_subnormal,
        fmt.underflow_limit,
    ]
    values = []
    for centre in np.float32(centres):
        values += [np.nextafter(centre, np.float32(0)), centre, np.nextafter(centre, np.inf)]
    values = np.float32(values)
    assert np.float64(values[1::3]).tolist() == centres, "boundaries must be exact float32"
    return np.concatenate([values, -values])


@pytest.mark.parametrize("dtype", FP8)
def test_cast_census_agrees_with_ml_dtypes_at_every_boundary_value(dtype: str) -> None:
    """Each of the 36 boundary values on its own lands where ml_dtypes puts it."""
    values = boundary_values(dtype)
    assert values.size == 36
    for value in values:
        assert cast_census(value[None], dtype) == real_census(value[None], dtype), float(value)


@pytest.mark.parametrize("dtype", FP8)
def test_cast_census_agrees_with_ml_dtypes_on_a_million_random_values(dtype: str) -> None:
    """10**6 signed log-uniform float32 values from far below the underflow limit to far above
    the overflow threshold: identical fractions, with every category populated."""
    fmt = float_format(dtype)
    rng = np.random.default_rng(2022)
    low = np.log2(fmt.underflow_limit) - 4
    high = np.log2(fmt.overflow_threshold) + 4
    exponents = rng.uniform(low, high, 10**6)
    values = (rng.choice([-1.0, 1.0], exponents.size) * np.exp2(exponents)).astype(np.float32)
    census = cast_census(values, dtype)
    assert census == real_census(values, dtype)
    assert census["count"] == 10**6
    assert all(census[key] > 0 for key in ("underflow", "subnormal", "overflow"))
