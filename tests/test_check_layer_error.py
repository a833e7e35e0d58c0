"""``mpbench check`` says which error is which: each layer's own error (the layer alone in half
precision on the float32 shadow's input) beside the accumulated one, so the layer that loses
precision is the one named; and the loss-scale window is judged on the activation gradients as
well as the weight gradients."""

from __future__ import annotations

import numpy as np
import pytest

from mpcore.check.api import check
from mpcore.check.shadow import loss_scale_window
from mpcore.precision.census import GradientCensus, Log2Histogram
from mpcore.user.loader import load_model


@pytest.fixture(scope="module")
def cancelling():
    return check(load_model("input_models:cancelling"), precisions=["mixed_float16"])


def test_the_layer_that_loses_precision_has_the_largest_own_error(cancelling):
    rows = {row.name: row for row in cancelling.precisions[0].layers}
    assert rows["lift"].own_error < 0.01  # 4000 + x keeps its relative precision
    assert rows["drop"].own_error > 0.1  # (4000 + x) - 4000 in float16: x is gone
    # "after" inherits drop's loss (accumulated) but adds little of its own.
    assert rows["after"].relative_error > 0.1
    assert rows["after"].own_error < 0.01
    worst = max(rows.values(), key=lambda row: row.own_error)
    assert worst.name == "drop"


def test_the_output_error_warning_names_the_layer_by_its_own_error(cancelling):
    warning = [f for f in cancelling.precisions[0].findings if f.kind == "output_error"]
    assert warning and warning[0].layer == "drop"
    assert "largest own error" in warning[0].message


def test_the_table_shows_both_errors(invoke, tmp_path):
    code, out, err = invoke(["check", "input_models:cancelling", "--out", str(tmp_path)])
    assert code in (0, 1), err
    header = next(line for line in out.splitlines() if line.startswith("layer "))
    assert "own err" in header and "accum. err" in header
    assert "judged on the weight gradients and the" in out and "activation gradients" in out


def _census(values: np.ndarray) -> GradientCensus:
    return GradientCensus(
        dtype="float16",
        loss_scale=1.0,
        loss=1.0,
        overall={},
        per_variable=[],
        histogram=Log2Histogram.of(values),
    )


def test_large_activation_gradients_lower_the_top_of_the_window():
    weights = _census(np.full(100, 2.0**-10))
    alone = loss_scale_window(weights)
    activations = Log2Histogram.of(np.full(100, 2.0**8))
    both = loss_scale_window(weights, activations, "3 layers'")
    # The window counts the bin [2^15, 2^16) as overflowing (float16's largest is 65504): the
    # weights alone allow 2^-10 * 2^24; 2^8-sized activation gradients, only up to 2^6.
    assert alone.high == 24 and both.high == 6
    assert alone.based_on == "weight gradients"
    assert both.based_on == "weight gradients and the 3 layers' activation gradients"


def test_the_check_judges_the_window_on_activation_gradients(cancelling):
    window = cancelling.precisions[0].window
    assert "activation gradients" in window.based_on
