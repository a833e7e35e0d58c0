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
