"""``mpcore.check.api`` and ``mpbench check``: each finding provoked by a purpose-built model.

Everything runs on the CPU (``tf.device("/CPU:0")`` where numbers are compared): the findings
are properties of the formats, not of a device.
"""

from __future__ import annotations

import json

import check_models
import keras
import numpy as np
import pytest
import tensorflow as tf

from mpcore.check.api import assert_mixed_precision_safe, check
from mpcore.check.shadow import loss_scale_window, relative_error, scaled_fractions
from mpcore.models.registry import build_model
from mpcore.precision.census import GradientCensus, Log2Histogram, cast_census
from mpcore.precision.modes import RunConfig, applied
from mpcore.user.loader import convert


def built(factory, precision: str = "float32") -> keras.Model:
    with applied(RunConfig(precision)):
        return factory()


def findings(report, kind: str) -> list:
    return [f for f in report.precisions[0].findings if f.kind == kind]


def test_float16_softmax_output_is_an_error_naming_the_head():
    model = built(check_models.softmax_head, "mixed_float16")
    report = check(model)
    (finding,) = findings(report, "half_final_activation")
    assert (finding.severity, finding.layer) == ("error", "probs")
    assert report.precisions[0].converted is False
    assert report.exit_status == 1
    # The same layers built in float32 are checked on convert()'s clone: float32 head, no finding.
    clean = check(built(check_models.softmax_head))
    assert not findings(clean, "half_final_activation")
    # bfloat16 keeps float32's range: the same head is a warning there.
    bf16 = check(built(check_models.softmax_head, "mixed_bfloat16"), precisions=["mixed_bfloat16"])
    assert [f.severity for f in findings(bf16, "half_final_activation")] == ["warning"]


def test_dense_100_is_not_a_multiple_of_8_with_its_flop_share():
    report = check(built(check_models.wide_dense))
    named = {(f.layer, f.message.split(" ")[0]) for f in findings(report, "not_multiple_of_8")}
    assert named == {("wide", "units=100"), ("head", "input_channels=100")}
    flops = {"fits": 64 * 96, "wide": 96 * 100, "head": 100 * 8}  # multiply-adds per sample
    share = flops["wide"] / sum(flops.values())
    (wide,) = [f for f in findings(report, "not_multiple_of_8") if f.layer == "wide"]
    assert f"{100 * share:.3g}% of the FLOPs" in wide.message
    assert wide.severity == "warning"


def test_batch_size_not_a_multiple_of_8():
    report = check(built(check_models.wide_dense), batch_size=6)
    assert [f.layer for f in findings(report, "not_multiple_of_8") if "batch" in f.message] == [
        None
    ]


@pytest.mark.parametrize("auto_scale_loss", [False, True])
def test_compiled_float16_model_without_loss_scaling(auto_scale_loss):
    with applied(RunConfig("mixed_float16")):
        model = check_models.wide_dense()
        model.compile(
            optimizer="sgd", loss="sparse_categorical_crossentropy", auto_scale_loss=auto_scale_loss
        )
    report = check(model)
    missing = findings(report, "no_loss_scaling")
    if auto_scale_loss:
        assert not missing
    else:
        (finding,) = missing
        assert (finding.severity, finding.layer) == ("error", None)
        assert "SGD" in finding.message
        assert report.exit_status == 1


def test_overflowing_activations_first_nonfinite_is_the_layer_after_the_scale_up():
    with tf.device("/CPU:0"):
        report = check(built(check_models.overflow_model_float16), check_models.overflow_data())
    result = report.precisions[0]
    assert result.first_nonfinite.layer == "after"
    assert result.first_nonfinite.pass_name == "forward"
    assert result.first_nonfinite.low > 65504  # the float32 values it gets are beyond float16
    rows = {row.name: row for row in result.layers}
    assert rows["scale_up"].finite and rows["scale_up"].compute_dtype == "float32"
    assert rows["scale_up"].overflow == 1.0  # its values are beyond float16 ...
    assert not rows["after"].finite  # ... and the float16 layer after it makes them inf
    (finding,) = findings(report, "nonfinite")
    assert (finding.severity, finding.layer) == ("error", "after")
    assert result.verdict.startswith("unsafe: after:")
    assert report.exit_status == 1
    # bfloat16 holds these values: no inf there.
    bf16 = check(
        built(check_models.overflow_model, "mixed_bfloat16"),
        check_models.overflow_data(),
        precisions=["mixed_bfloat16"],
    )
    assert bf16.precisions[0].first_nonfinite is None


def test_deep_sigmoid_gradients_underflow_without_loss_scaling():
    model = built(check_models.stacked_sigmoid_model)
    batch = (np.ones((8, 1), np.float32), np.zeros((8, 1), np.float32))
    with tf.device("/CPU:0"):
        report = check(model, batch, loss="mean_squared_error")
    result = report.precisions[0]
    window = result.window
    assert window.low <= 15 <= window.high  # 2**15 is in the window
    assert window.low > 0  # 1 is not
    assert window.underflow_at_1 > 0.01
    assert window.underflow_at_1 == pytest.approx(result.census["overall_at_1"]["underflow"])
    (finding,) = findings(report, "needs_loss_scaling")
    # The first Dense is the deepest from the loss: its gradient is the smallest.
    assert finding.layer == model.layers[1].name
    assert result.census["loss_scale"] == 2.0**15
    assert result.verdict.startswith("safe with loss scaling")
    assert report.exit_status == 0


def test_histogram_window_matches_real_casts():
    rng = np.random.default_rng(1)
    values = np.exp2(rng.uniform(-30, 5, 5000)) * rng.choice([-1, 1], 5000)
    census = GradientCensus(
        "float16", 1.0, 0.0, cast_census(values, "float16"), [], Log2Histogram.of(values)
    )
    for exponent in (-8, 0, 5, 12, 20):
        real = cast_census(values * 2.0**exponent, "float16")
        under, over = scaled_fractions(census, exponent)
        assert under == pytest.approx(real["underflow"])
        assert over >= real["overflow"]  # a shared top bin counts as overflowing
    window = loss_scale_window(census)
    assert window.low is not None
    for exponent in range(window.low, window.high + 1):
        real = cast_census(values * 2.0**exponent, "float16")
        assert real["overflow"] == 0 and real["underflow"] < 0.01


def test_relative_error_is_the_ratio_of_euclidean_norms():
    """The per-layer error sums its squares itself (not BLAS's threaded dot product, slow on a
    busy machine): the same figure as numpy's norms, and inf or 0 at the edges."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(8, 16, 16, 64)).ravel()
    half = reference + rng.normal(scale=1e-3, size=reference.size)
    expected = np.linalg.norm(half - reference) / np.linalg.norm(reference)
    assert relative_error(half, reference) == pytest.approx(expected, rel=1e-12)
    assert relative_error(reference, reference) == 0.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.ones(3), np.zeros(3)) == float("inf")
    assert relative_error(np.array([np.inf, 1.0]), np.ones(2)) == float("inf")


@pytest.fixture(scope="module")
def resnet50() -> keras.Model:
    """ResNet50 at its smallest input (32 px), random weights: built once for the two tests that
    read it (neither changes it; the check's cost is its 23.5M parameters, not the batch)."""
    with applied(RunConfig("float32")):
        return build_model("resnet50", 32)


@pytest.mark.slow
def test_clean_resnet50_has_no_error_findings_and_assert_helper_passes(resnet50):
    report = assert_mixed_precision_safe(resnet50, precisions=["mixed_float16", "mixed_bfloat16"])
    for result in report.precisions:
        assert not result.errors, result.findings
        assert result.first_nonfinite is None
        assert result.converted


def test_assert_helper_names_the_layer():
    with pytest.raises(AssertionError, match=r"\[nonfinite\] after:"):
        assert_mixed_precision_safe(
            built(check_models.overflow_model_float16), check_models.overflow_data()
        )


@pytest.mark.slow
def test_convert_resnet50_float32_output_half_convs_close_predictions(resnet50):
    model = resnet50
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    with tf.device("/CPU:0"):
        reference = model(images, training=False).numpy()
        for precision, dtype, roundoff in [
            ("mixed_float16", "float16", 2.0**-11),
            ("mixed_bfloat16", "bfloat16", 2.0**-8),
        ]:
            clone = convert(model, precision)
            assert clone.outputs[0].dtype == "float32"
            convs = [layer for layer in clone.layers if isinstance(layer, keras.layers.Conv2D)]
            assert len(convs) == 53 and {layer.compute_dtype for layer in convs} == {dtype}
            for ours, theirs in zip(clone.get_weights(), model.get_weights(), strict=True):
                np.testing.assert_array_equal(ours, theirs)
            predictions = clone(images, training=False).numpy()
            # Rounding to the format at each of ~50 layers: allow 64 unit roundoffs.
            error = np.linalg.norm(predictions - reference) / np.linalg.norm(reference)
            assert error < 64 * roundoff, (precision, error)


def test_cli_check_json_and_png(invoke, tmp_path):
    code, out, err = invoke(
        [
            "check",
            "check_models:overflow_model_float16",
            "--data",
            "check_models:overflow_data",
            "--json",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1, err
    document = json.loads(out)
    assert document["precisions"][0]["first_nonfinite"]["layer"] == "after"
    assert (tmp_path / "check_mixed_float16.png").stat().st_size > 0
    assert json.loads((tmp_path / "check.json").read_text()) == document


def test_cli_check_table_exit_0(invoke, tmp_path):
    code, out, _ = invoke(["check", "check_models:wide_dense", "--out", str(tmp_path)])
    assert code == 0
    assert "verdict (mixed_float16): safe" in out
    assert "units=100 is not a multiple of 8" in out
