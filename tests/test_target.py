"""Time to target (``--target``): the parser, the recorder on a real tiny ``fit``, parity."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from mpcore.run.convergence import epochs_parity, p_more
from mpcore.train.target import Target, TargetRecorder, parse_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("val_accuracy=0.9", Target("val_accuracy", ">=", 0.9)),
        ("val_loss=0.3", Target("val_loss", "<=", 0.3)),
        ("val_loss<=0.0000001", Target("val_loss", "<=", 1e-7)),
        ("accuracy >= 0.5", Target("accuracy", ">=", 0.5)),
        ("val_accuracy<=0.2", Target("val_accuracy", "<=", 0.2)),
    ],
)
def test_target_parses_direction_from_metric_or_operator(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("val_accuracy=1.01", "can never be reached"),
        ("val_accuracy>=1.5", "can never be reached"),
        ("val_loss<=-0.1", "can never be reached"),
        ("val_accuracy", "must look like"),
        ("val_accuracy=high", "must be a number"),
        ("val_accuracy=nan", "must be finite"),
        ("", "must look like"),
    ],
)
def test_target_refuses_in_one_line(text, words):
    with pytest.raises(ValueError, match=words) as error:
        parse_target(text)
    assert "\n" not in str(error.value)


def test_target_reached_respects_direction_and_nan():
    at_least, at_most = Target("a", ">=", 0.9), Target("l", "<=", 0.3)
    assert at_least.reached(0.9) and not at_least.reached(0.89)
    assert at_most.reached(0.3) and not at_most.reached(0.31)
    assert not at_most.reached(math.nan) and not at_least.reached(math.inf * 0)


@pytest.fixture(scope="module")
def separable():
    generator = np.random.default_rng(0)
    x = generator.normal(size=(256, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    return x, y


def _fit(data, target: str, epochs: int):
    x, y = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(
        keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    recorder = TargetRecorder(parse_target(target))
    history = model.fit(
        x, y, validation_split=0.25, epochs=epochs, batch_size=32, verbose=0, callbacks=[recorder]
    )
    return recorder, history.history


def test_recorder_stops_fit_at_the_epoch_that_reaches_the_target(separable):
    recorder, history = _fit(separable, "val_accuracy=0.9", epochs=30)
    result = recorder.result()
    assert result["reached"]
    # fit stopped at the reaching epoch: every earlier epoch was below the target
    assert len(history["val_accuracy"]) == result["epochs"] < 30
    assert result["values"] == pytest.approx(history["val_accuracy"])
    assert all(value < 0.9 for value in result["values"][:-1]) and result["values"][-1] >= 0.9
    assert result["seconds"] > 0 and result["compile_seconds"] > 0


def test_recorder_reports_an_unreached_target_without_a_time(separable):
    recorder, history = _fit(separable, "val_loss<=0.0000001", epochs=3)
    result = recorder.result()
    assert not result["reached"] and result["epochs"] is None and result["seconds"] is None
    assert len(history["val_loss"]) == 3 == len(result["values"])


def test_recorder_names_a_metric_the_model_does_not_log(separable):
    recorder, history = _fit(separable, "val_auc=0.9", epochs=5)
    assert len(history["loss"]) == 1  # stopped at once, not trained to the maximum
    with pytest.raises(ValueError, match=r"'val_auc' is not logged.*val_accuracy"):
        recorder.result()


def test_rank_sum_p_value_exact_small_cases():
    # every repeat of other above every baseline repeat: 1 of C(6, 3) = 20 splits
    assert p_more([3, 3, 3], [5, 6, 5]) == pytest.approx(1 / 20)
    assert p_more([3, 3, 3, 3], [5, 6, 5, 7]) == pytest.approx(1 / 70)
    # identical samples: half the splits or more are at least as extreme
    assert p_more([3, 4, 5], [3, 4, 5]) > 0.5
    # the other direction is never "more"
    assert p_more([5, 6, 5], [3, 3, 3]) == pytest.approx(1.0)


def test_parity_flags_more_epochs_and_unreached_and_passes_parity():
    assert epochs_parity([3, 3, 3], [5, 6, 5]).verdict == "needs more epochs"
    assert epochs_parity([3, 3, 3], [3, 4, 3]).verdict == "no more epochs"
    # a repeat that never reached counts as more epochs than any that did
    assert epochs_parity([3, 3, 3], [5, None, 6]).verdict == "needs more epochs"
    unreached = epochs_parity([3, 3, 3], [None, None, None])
    assert unreached.verdict == "not reached" and unreached.epochs is None
