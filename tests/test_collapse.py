"""A collapsing loss scale is a finding of ``mpbench run``: each configuration's loss-scale history
and skipped steps are recorded, a collapse is flagged in results.json and in the table with the
skipped-step count."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from mpcore.report.tables import run_rows, run_table
from mpcore.run.callbacks import make_loss_scale_watch
from mpcore.run.lossscale import summarise_loss_scale
from mpcore.run.schema import SCHEMA, ShapeError, check_results


def test_a_fall_of_2_to_the_10_or_more_is_a_collapse():
    summary = summarise_loss_scale(32768.0, [4.0], [13], [100])
    assert summary["collapsed"]
    assert "fell by 2^13 from 32768 to 4" in summary["collapse_rule"]
    assert summary["skipped_total"] == 13


def test_a_scale_at_or_below_the_floor_is_a_collapse_whatever_it_started_at():
    summary = summarise_loss_scale(16.0, [8.0, 1.0], [1, 3], [50, 50])
    assert summary["collapsed"]
    assert "fell to 1" in summary["collapse_rule"]
    assert summary["skipped_total"] == 4


def test_the_usual_early_adjustment_is_not_a_collapse():
    # A few halvings at the start are how dynamic scaling finds its level (2^15 -> 2^12).
    summary = summarise_loss_scale(32768.0, [4096.0, 4096.0], [3, 0], [100, 100])
    assert not summary["collapsed"] and summary["collapse_rule"] is None
    assert summary["skipped_steps"] == [3, 0]


def _document(scaling):
    result = {
        "first_epoch_seconds": 1.0,
        "steady_epoch_seconds": 1.0,
        "ms_per_step": 10.0,
        "images_per_second": 100.0,
        "loss": [7.26],
        "accuracy": [0.2],
        "val_accuracy": [0.2],
        "loss_scale": scaling["per_epoch"] if scaling else None,
        "loss_scaling": scaling,
    }
    record = {"name": "mixed_float16+xla_off", "config": {}, "status": "ok", "result": result}
    base = copy.deepcopy(record) | {"name": "float32+xla_off"}
    base["result"] = base["result"] | {"loss_scaling": None, "loss_scale": None}
    return {"schema": SCHEMA, "settings": {}, "data": {}, "configurations": [base, record]}


def test_the_table_flags_a_collapse_with_the_skipped_step_count():
    document = _document(summarise_loss_scale(32768.0, [4.0], [37], [400]))
    check_results(document)
    status = run_rows(document)[1]["status"]
    assert status == "ok, loss scale collapsed: 32768 to 4, 37 of 400 steps skipped"
    table = run_table(document)
    assert "37 of 400" in table  # the status cell wraps, but is in the table
    assert "loss scale collapsed in mixed_float16+xla_off: fell by 2^13" in table


def test_the_table_says_nothing_of_a_healthy_scale():
    table = run_table(_document(summarise_loss_scale(32768.0, [16384.0], [1], [400])))
    assert "collapsed" not in table


def test_the_schema_checks_the_history_types():
    document = _document(summarise_loss_scale(32768.0, [4.0], [37], [400]))
    document["configurations"][1]["result"]["loss_scaling"]["collapsed"] = "yes"
    with pytest.raises(ShapeError, match=r"loss_scaling\.collapsed"):
        check_results(document)


def _fit_with_watch(loss_factor: float, epochs: int = 2):
    """A tiny Dense model trained under mixed_float16 with Keras's LossScaleOptimizer; the loss
    is multiplied by ``loss_factor`` (1e35 makes every gradient overflow float16)."""
    import keras

    from mpcore.precision.modes import RunConfig, applied

    with applied(RunConfig("mixed_float16")):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(1, dtype="float32")(keras.layers.Dense(8)(inputs))
        model = keras.Model(inputs, outputs)

        def loss(y, p):
            return loss_factor * keras.ops.mean(keras.ops.square(y - p))

        model.compile(optimizer="sgd", loss=loss)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 4)).astype("float32")
        y = rng.standard_normal((32, 1)).astype("float32")
        watch = make_loss_scale_watch()
        model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, callbacks=[watch])
    return watch.summary()


@pytest.fixture(scope="module")
def planted():
    return _fit_with_watch(1e35)


def test_a_planted_collapse_is_recorded_with_every_skipped_step(planted):
    summary = planted
    assert summary["initial_scale"] == 32768
    assert summary["steps"] == [8, 8]
    assert summary["skipped_steps"] == [8, 8]  # no update ever applied
    assert summary["per_epoch"] == [32768 / 2**8, 32768 / 2**16]
    assert summary["collapsed"]


def test_a_healthy_run_counts_exactly_the_halvings():
    # Dynamic scaling halves the scale once per skipped step and grows it only after 2000 good
    # ones: in a short run the skipped steps are the halvings, and a few are no collapse.
    summary = _fit_with_watch(1.0, epochs=2)
    halvings = np.log2(summary["initial_scale"] / summary["per_epoch"][-1])
    assert summary["skipped_total"] == halvings < 10
    assert summary["skipped_steps"][-1] == 0  # settled in the first epoch
    assert not summary["collapsed"]


def test_the_planted_collapse_is_flagged_in_the_table(planted):
    document = _document(planted)
    check_results(document)
    assert run_rows(document)[1]["status"] == (
        "ok, loss scale collapsed: 32768 to 0.5, 16 of 16 steps skipped"
    )
    assert "fell to 0.5 (at or below 1), 16 steps skipped" in run_table(document)
