"""Claim 3: ``gradient_census`` shows float16 underflow of a small model's gradients at loss
scale 1 and none at the scale a LossScaleOptimizer settles on; plus the census API's contract."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from mpcore.data.ships import make_dataset, read_ship_index
from mpcore.models.registry import build_model, model_spec
from mpcore.precision.census import (
    GradientCensus,
    Log2Histogram,
    cast_census,
    gradient_census,
)
from mpcore.precision.census_plot import plot_log2_histogram
from mpcore.precision.modes import RunConfig, applied
from mpcore.probe import backend
from mpcore.probe.backend import tf
from mpcore.train.fit import current_loss_scale

IMAGE_SIZE = 32
#: The head's bias favours the batch's true class by this many nats: the model is confidently
#: right (as late in training), p(other classes) ~ e**-16 ~ 1e-7, so every gradient is tiny.
CONFIDENCE_MARGIN = 16.0
CROSS_ENTROPY = keras.losses.SparseCategoricalCrossentropy()


@pytest.fixture(scope="module")
def cargo_batch(ship_root: Path) -> tuple[tf.Tensor, tf.Tensor]:
    """16 generated Cargo ship images (label 0) through the real loading path (tf.data, so on
    TensorFlow; elsewhere the same files decoded and resized by PIL, scaled to 0..1)."""
    index = read_ship_index(ship_root)
    cargo = index.subset([i for i, label in enumerate(index.labels) if label == 0][:16])
    if not backend.is_tensorflow():
        images = [
            np.asarray(Image.open(path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)), np.float32)
            for path in cargo.paths
        ]
        return np.stack(images) / np.float32(255.0), np.zeros(16, np.int32)
    dataset = make_dataset(cargo, IMAGE_SIZE, 16, model_spec("small").preprocess, shuffle=False)
    images, labels = next(iter(dataset))
    assert labels.numpy().tolist() == [0] * 16
    return images, labels


@pytest.fixture(scope="module")
def confident_weights() -> list[np.ndarray]:
    """Weights of the small model, seeded, with the head biased towards class 0."""
    with applied(RunConfig("float32")):
        keras.utils.set_random_seed(0)
        model = build_model("small", IMAGE_SIZE)
        bias = np.zeros(5, np.float32)
        bias[0] = CONFIDENCE_MARGIN
        model.get_layer("predictions").bias.assign(bias)
        return model.get_weights()


@pytest.fixture(scope="module")
def settled_scale(confident_weights, cargo_batch) -> float:
    """The largest loss scale at which the mixed_float16 model's training step stays finite, as
    found by a LossScaleOptimizer that may grow every step (``dynamic_growth_steps=1``). The
    learning rate is 0 so every step sees the same model."""
    with applied(RunConfig("mixed_float16")):
        model = build_model("small", IMAGE_SIZE)
        model.set_weights(confident_weights)
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.0), dynamic_growth_steps=1
        )
        optimizer.build(model.trainable_variables)  # its scale is readable before the first step
        model.compile(optimizer=optimizer, loss=CROSS_ENTROPY, jit_compile=False)
        finite_scales, overflowed_scales = [], []
        for _ in range(40):
            scale = current_loss_scale(optimizer)
            model.train_on_batch(*cargo_batch)
            grew = current_loss_scale(optimizer) > scale
            (finite_scales if grew else overflowed_scales).append(scale)
    # It grew from 2**15 until the first overflow, then alternated between S and 2 S.
    assert overflowed_scales, "the search never overflowed: 40 steps were not enough"
    settled = max(finite_scales)
    assert min(overflowed_scales) == 2 * settled
    return settled


def float32_model(weights: list[np.ndarray]) -> keras.Model:
    with applied(RunConfig("float32")):
        model = build_model("small", IMAGE_SIZE)
    model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def confident_model(confident_weights) -> keras.Model:
    """One float32 small model with the confident weights, shared: the census never changes it
    (checked below), and it is never compiled here."""
    return float32_model(confident_weights)


@pytest.fixture(scope="module")
def census_at(confident_model, cargo_batch):
    """``census_at(scale)``: the float16 census of the confident model, computed once per scale."""
    reports: dict[float, GradientCensus] = {}

    def census(loss_scale: float) -> GradientCensus:
        if loss_scale not in reports:
            reports[loss_scale] = gradient_census(
                confident_model, cargo_batch, loss_scale, loss_fn=CROSS_ENTROPY
            )
        return reports[loss_scale]

    return census


def test_at_loss_scale_1_most_gradients_of_a_confident_model_underflow_in_float16(
    census_at,
) -> None:
    """At scale 1 more than half of the non-zero gradient values would flush to zero in float16
    (measured: 83%), and the rest are mostly subnormal: no value is a normal float16."""
    census = census_at(1.0).overall
    assert census["count"] > 20_000
    assert census["underflow"] > 0.5
    assert census["underflow"] + census["subnormal"] == 1.0
    assert census["overflow"] == 0.0


def test_at_the_scale_the_loss_scale_optimizer_settles_on_nothing_underflows(
    census_at, settled_scale: float
) -> None:
    """At the settled scale (measured 2**36) no gradient value underflows or is subnormal, and
    nothing overflows except in the float32 softmax head, whose gradients never pass through
    float16 in the mixed model (that is why the search did not see them)."""
    assert settled_scale > 2.0**15
    report = census_at(settled_scale)
    assert report.overall["underflow"] == 0.0
    assert report.overall["subnormal"] == 0.0
    for variable in report.per_variable:
        if not variable.name.startswith("predictions/"):
            assert variable.census["overflow"] == 0.0, variable.name


def test_at_the_default_scale_2_pow_15_underflow_is_below_a_thousandth(census_at) -> None:
    """The default initial scale already cuts underflow from over 50% to under 0.1%
    (measured: 0.004%)."""
    census = census_at(2.0**15).overall
    assert 0.0 <= census["underflow"] < 1e-3
    assert census["overflow"] == 0.0


@pytest.mark.tensorflow_only
def test_gradient_census_is_the_cast_census_of_the_scaled_tape_gradients(
    confident_weights, cargo_batch
) -> None:
    """Overall, per-variable and histogram figures equal those computed directly from
    ``GradientTape`` gradients of the same loss times the scale."""
    scale = 2.0**20
    model = float32_model(confident_weights)  # its own: the tape pass below moves BN statistics
    report = gradient_census(model, cargo_batch, scale, loss_fn=CROSS_ENTROPY)
    images, labels = cargo_batch
    with tf.GradientTape() as tape:
        loss = CROSS_ENTROPY(labels, model(images, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    scaled = [np.asarray(g, np.float64) * scale for g in gradients]
    everything = np.concatenate([g.ravel() for g in scaled])
    assert report.loss == pytest.approx(float(loss), rel=1e-6)
    assert report.overall == cast_census(everything, "float16")
    assert [v.name for v in report.per_variable] == [v.path for v in model.trainable_variables]
    for variable, gradient in zip(report.per_variable, scaled, strict=True):
        assert variable.shape == list(gradient.shape)
        assert variable.census == cast_census(gradient, "float16")
    assert report.histogram == Log2Histogram.of(everything)
    assert report.histogram.total == everything.size == model.count_params() - 2 * (16 + 32 + 64)


def test_a_census_at_several_scales_is_one_pass_with_each_scales_figures(
    confident_model, cargo_batch, census_at, settled_scale: float, monkeypatch
) -> None:
    """``gradient_censuses`` differentiates once and gives, scale by scale and in the order
    asked, exactly the census that ``gradient_census`` gives at that scale alone."""
    from mpcore.precision import census as census_module

    passes = []
    one_pass = census_module._loss_and_gradients
    monkeypatch.setattr(
        census_module,
        "_loss_and_gradients",
        lambda *args: passes.append(args) or one_pass(*args),
    )
    scales = [2.0**15, 1.0, settled_scale, 1.0]
    reports = census_module.gradient_censuses(
        confident_model, cargo_batch, scales, loss_fn=CROSS_ENTROPY
    )
    assert len(passes) == 1
    assert reports[3] is reports[1]  # a scale asked for twice is counted once
    assert [r.loss_scale for r in reports] == scales
    for scale, report in zip(scales, reports, strict=True):
        assert report == census_at(scale), scale


def test_gradient_census_uses_the_compiled_loss_when_no_loss_fn_is_given(
    confident_weights, cargo_batch, census_at
) -> None:
    model = float32_model(confident_weights)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=False)
    compiled = gradient_census(model, cargo_batch, 2.0**10)
    explicit = census_at(2.0**10)
    assert compiled.overall == explicit.overall
    assert compiled.loss == pytest.approx(explicit.loss, rel=1e-6)


def test_gradient_census_leaves_weights_and_batch_norm_statistics_unchanged(
    confident_weights, confident_model, cargo_batch
) -> None:
    """The training-mode forward pass updates batch-norm moving statistics; the census puts them
    back, so it can be run on a model mid-training."""
    gradient_census(confident_model, cargo_batch, loss_fn=CROSS_ENTROPY)
    after = confident_model.get_weights()
    for before_value, after_value in zip(confident_weights, after, strict=True):
        np.testing.assert_array_equal(before_value, after_value)


def test_gradient_census_refuses_a_model_that_does_not_compute_in_float32(cargo_batch) -> None:
    with applied(RunConfig("mixed_float16")):
        model = build_model("small", IMAGE_SIZE)
        with pytest.raises(ValueError, match=r"needs a float32 model.*float16"):
            gradient_census(model, cargo_batch, loss_fn=CROSS_ENTROPY)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"loss_scale": 0.0}, "loss_scale must be a positive finite number"),
        ({"loss_scale": float("inf")}, "loss_scale must be a positive finite number"),
        ({"dtype": "float8"}, "unknown cast dtype 'float8'"),
        ({}, "not compiled: compile it or pass loss_fn"),
    ],
)
def test_gradient_census_rejects_bad_arguments_with_one_clear_message(
    confident_weights, cargo_batch, arguments: dict, message: str
) -> None:
    model = float32_model(confident_weights)
    with pytest.raises(ValueError, match=message):
        gradient_census(model, cargo_batch, **arguments)


def test_the_report_round_trips_through_json(census_at) -> None:
    report = census_at(2.0**15)
    record = json.loads(json.dumps(report.to_dict()))
    assert record["dtype"] == "float16" and record["loss_scale"] == 2.0**15
    assert record["overall"] == report.overall
    assert record["histogram"]["counts"] == report.histogram.counts
    assert record["per_variable"][0]["name"] == report.per_variable[0].name


def test_log2_histogram_bins_are_exact_at_powers_of_two() -> None:
    """A value of exactly 2**k lands in bin k; the largest float below it in bin k - 1; zeros and
    NaN/inf are counted apart."""
    below = float(np.nextafter(2.0**-24, 0))
    histogram = Log2Histogram.of(np.array([2.0**-24, -below, 2.0**-22, 0.0, np.inf, np.nan]))
    assert histogram.exponents == [-25, -24, -23, -22]
    assert histogram.counts == [1, 1, 0, 1]
    assert (histogram.zeros, histogram.nonfinite, histogram.total) == (1, 2, 6)


def test_plot_log2_histogram_writes_a_png(census_at, tmp_path: Path) -> None:
    report = census_at(1.0)
    path = plot_log2_histogram(report, tmp_path / "plots" / "census.png", title="scale 1")
    assert path == tmp_path / "plots" / "census.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
