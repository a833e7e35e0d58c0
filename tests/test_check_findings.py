"""``mpbench check``'s findings agree with each other and with what the user gave: the user's
initial loss scale is the one judged, and nothing ``convert()`` did itself is blamed on the user."""

from __future__ import annotations

import json

import pytest

from mpcore.check.api import check
from mpcore.user.loader import load_model


@pytest.fixture(scope="module")
def scale_16_report():
    return check(load_model("input_models:scale_16"), precisions=["mixed_float16"])


def test_users_initial_loss_scale_is_judged_and_named(scale_16_report):
    census = scale_16_report.precisions[0].census
    assert census["loss_scale"] == 16
    assert "initial_scale" in census["loss_scale_source"]


def test_default_loss_scale_is_named_as_the_default():
    report = check(load_model("input_models:heavy_head"), precisions=["mixed_float16"])
    census = report.precisions[0].census
    assert census["loss_scale"] == 2**15
    assert "default" in census["loss_scale_source"]


def test_no_float32_heavy_warning_on_the_head_convert_pinned(scale_16_report):
    item = scale_16_report.precisions[0]
    assert item.converted
    head = next(row for row in item.layers if row.name == "head")
    assert head.compute_dtype == "float32" and head.flop_share >= 0.10  # the rule's ground
    assert not [f for f in item.findings if f.kind == "float32_heavy"], item.findings


def test_float32_heavy_still_warns_on_a_layer_the_user_pinned():
    import keras

    from mpcore.check.audit import audit

    inputs = keras.Input((64,))
    x = keras.layers.Dense(64, dtype="float32", name="pinned")(inputs)
    outputs = keras.layers.Dense(8, dtype="float32", name="head")(x)
    model = keras.Model(inputs, outputs)
    findings = audit(model, "mixed_float16", {"pinned": 0.9, "head": 0.1}, 8, frozenset({"head"}))
    assert [f.layer for f in findings if f.kind == "float32_heavy"] == ["pinned"]


def test_cli_says_which_loss_scale_it_judged(invoke, tmp_path):
    code, out, err = invoke(["check", "input_models:scale_16", "--out", str(tmp_path)])
    assert code in (0, 1), err
    assert "at loss scale 16 (the LossScaleOptimizer's initial_scale)" in out
    document = json.loads((tmp_path / "check.json").read_text())
    assert document["precisions"][0]["census"]["loss_scale"] == 16


def test_steps_train_before_judging_and_a_collapse_is_an_error(invoke, tmp_path):
    code, out, err = invoke(
        ["check", "input_models:collapsing", "--steps", "12", "--out", str(tmp_path)]
    )
    assert code == 1, err
    document = json.loads((tmp_path / "check.json").read_text())
    item = document["precisions"][0]
    training = item["training"]
    assert training["steps"] == 12 and training["skipped_steps"] == 12
    assert training["loss_scales"][0] == 2**15 and training["loss_scales"][-1] == 2**3
    collapse = [f for f in item["findings"] if f["kind"] == "loss_scale_collapse"]
    assert collapse and "12 of 12 steps skipped" in collapse[0]["message"]
    assert "fell by 2^12 from 32768 to 8" in collapse[0]["message"]
    assert "judged after 12 training steps on this batch" in out
    # The census is taken at the scale training reached, and says so.
    assert item["census"]["loss_scale"] == 8
    assert "current scale" in item["census"]["loss_scale_source"]


def test_without_steps_the_report_says_it_judged_at_initialisation(scale_16_report):
    from mpcore.face.check_cmd import render

    assert scale_16_report.precisions[0].training is None
    assert "judged at initialisation" in render(scale_16_report.to_dict())


def test_steps_leave_the_users_own_model_untouched():
    import numpy as np

    loaded = load_model("input_models:built_in_float16")
    before = [w.copy() for w in loaded.model.get_weights()]
    report = check(loaded, precisions=["mixed_float16"], steps=8)
    item = report.precisions[0]
    training = item.training
    assert not item.converted and training.steps == 8 and len(training.loss_scales) == 9
    # Its float16 head overflows at the first scales: those steps are skipped, the rest train.
    assert training.skipped_steps < 8 and training.losses[0] != training.losses[-1]
    after = loaded.model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert not loaded.model.optimizer.built  # the user's optimizer was not used
