"""Time to target (``--target``): the parser, the recorder on a real tiny ``fit``, parity."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from mpcore.probe import backend
from mpcore.run.convergence import epochs_parity, p_more
from mpcore.train.fit import build_before_tracing
from mpcore.train.target import Target, parse_target, target_recorder


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


def _fit(data, target: str, epochs: int, learning_rate: float = 0.05, seed: int = 0):
    """A real ``fit`` of a softmax regression with the recorder, the last quarter held out (as
    ``validation_split=0.25`` would), the training quarters shuffled each epoch, batches of 32.

    On TensorFlow the splits are tf.data datasets and the optimizer and metrics are built before
    ``fit`` traces its step (``build_before_tracing``, as ``train`` does): from numpy arrays Keras
    rebuilds its input pipeline every epoch, about 90 ms of CPU per epoch against 15 ms, and
    traces the train step twice (0.1 s). The planted slow learner's 135 epochs took 20 of the
    module's 26 CPU seconds that way."""
    x, y = data
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(
        keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    recorder = target_recorder(parse_target(target))
    split = len(x) * 3 // 4
    if backend.is_tensorflow():
        import tensorflow as tf

        training = (
            tf.data.Dataset.from_tensor_slices((x[:split], y[:split]))
            .shuffle(split, seed=seed)
            .batch(32)
        )
        build_before_tracing(model, training)
        inputs = {"x": training, "shuffle": False}  # the dataset shuffles itself
        validation = tf.data.Dataset.from_tensor_slices((x[split:], y[split:])).batch(32)
    else:
        inputs = {"x": x[:split], "y": y[:split], "batch_size": 32}
        validation = (x[split:], y[split:])
    history = model.fit(
        **inputs, validation_data=validation, epochs=epochs, verbose=0, callbacks=[recorder]
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


@pytest.mark.slow
def test_parity_flags_a_planted_slow_learner_trained_for_real(separable):
    """The test's own hook: one configuration learns at a fifth of the rate. Over three seeds
    each, it needs more epochs to the target and the parity call says so; the same rate, on
    three other seeds, does not. (Measured: 5-6 epochs at the full rate on seeds 0-2, 3-6 on
    seeds 3-5, 28-36 at a fifth; a tenth never reached the target in 60 epochs on two seeds of
    three, and its 180 epochs were most of the test's time.)"""

    def epochs(learning_rate: float, seeds: range) -> list[int | None]:
        return [
            _fit(separable, "val_loss=0.3", 60, learning_rate, seed)[0].result()["epochs"]
            for seed in seeds
        ]

    baseline, slow = epochs(0.05, range(3)), epochs(0.01, range(3))
    # Other seeds than the baseline's: the same seeds would repeat its epochs exactly (op
    # determinism on a CPU), which any parity call passes.
    same = epochs(0.05, range(3, 6))
    assert epochs_parity(baseline, slow).verdict == "needs more epochs", (baseline, slow)
    assert epochs_parity(baseline, slow).p_value <= 0.05
    assert epochs_parity(baseline, same).verdict == "no more epochs"


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


def _target_document(epochs: dict[str, list[int | None]], seconds_per_epoch: dict[str, float]):
    """A results document of a --target run: per configuration, each repeat's epochs to
    target (None: not reached) at a fixed time per epoch."""
    from mpcore.names import BASELINE

    records = []
    for name, counts in epochs.items():
        runs = [
            {
                "repeat": index,
                "status": "ok",
                "ms_per_step": 10.0 * seconds_per_epoch[name],
                "target": {
                    "metric": "val_accuracy",
                    "direction": ">=",
                    "value": 0.9,
                    "reached": count is not None,
                    "epochs": count,
                    "seconds": None
                    if count is None
                    else count * seconds_per_epoch[name] * (1 + index / 100),
                    "compile_seconds": 2.0,
                    "values": [],
                },
            }
            for index, count in enumerate(counts)
        ]
        records.append({"name": name, "status": "ok", "repeats": runs, "result": {}})
    assert records[0]["name"] == BASELINE
    return {"settings": {"target": "val_accuracy>=0.9"}, "configurations": records}


def test_target_table_speedup_to_target_parity_and_unreached_rows():
    from mpcore.names import BASELINE
    from mpcore.report.target import target_rows, target_table

    document = _target_document(
        {
            BASELINE: [3, 3, 3, 3],
            "fast_but_slow_to_learn": [6, 6, 7, 6],  # 2x faster steps, 2x the epochs
            "same": [3, 3, 3, 3],
            "never": [None, None, 4, None],
        },
        {BASELINE: 10.0, "fast_but_slow_to_learn": 5.0, "same": 10.0, "never": 5.0},
    )
    rows = {row["configuration"]: row for row in target_rows(document)}
    assert rows[BASELINE]["time_speedup"] == "1.00x"
    assert rows["fast_but_slow_to_learn"]["parity"].startswith("needs more epochs")
    assert rows["same"]["parity"].startswith("no more epochs")
    # about as fast to the target (2x per step, 2x the epochs): not called faster
    assert rows["fast_but_slow_to_learn"]["time_verdict"] != "faster"
    # a configuration that missed the target in some repeats has no time, never a speedup
    assert rows["never"]["time_to_target_s"] == "not reached in 3 of 4"
    assert rows["never"]["time_verdict"] == "not reached" and rows["never"]["time_speedup"] == "-"
    text = target_table(document)
    assert "time to val_accuracy>=0.9" in text and "not reached in 3 of 4" in text


def test_target_table_calls_a_faster_time_to_target():
    from mpcore.names import BASELINE
    from mpcore.report.target import target_rows

    document = _target_document(
        {BASELINE: [4, 4, 4, 4, 4], "quick": [4, 4, 4, 4, 4]},
        {BASELINE: 10.0, "quick": 5.0},
    )
    rows = {row["configuration"]: row for row in target_rows(document)}
    assert rows["quick"]["time_verdict"] == "faster"
    assert rows["quick"]["time_speedup"].startswith("2.0")


def test_target_table_is_empty_without_a_target():
    from mpcore.report.target import target_table

    assert target_table({"settings": {"target": None}, "configurations": []}) == ""
