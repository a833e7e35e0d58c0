"""Precision/XLA modes: applying, restoring and verifying every configuration."""

from __future__ import annotations

import itertools

import keras
import pytest
import tensorflow as tf

from mpcore.names import PRECISIONS, XLA_MODES, parse_precision, parse_xla
from mpcore.precision.modes import (
    GlobalState,
    ModeMismatchError,
    RunConfig,
    amp_rewrite_enabled,
    applied,
    autoclustering_enabled,
    check_model,
)
from mpcore.train.fit import compile_for

ALL_CONFIGS = [RunConfig(p, x) for p, x in itertools.product(PRECISIONS, XLA_MODES)]


def _tiny_model(config: RunConfig) -> keras.Model:
    """The small CNN at its minimum size, compiled for ``config`` (fast to build)."""
    from mpcore.models.registry import build_model

    return compile_for(build_model("small", 8), config, 1e-3)


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: c.name)
def test_every_mode_applies_and_verifies(config: RunConfig) -> None:
    with applied(config):
        model = _tiny_model(config)
        check_model(model, config)
        hidden = model.get_layer(index=1)
        assert hidden.compute_dtype == {
            "mixed_float16": "float16",
            "mixed_bfloat16": "bfloat16",
            "float8": "bfloat16",
        }.get(config.precision, "float32")
        assert model.get_layer("predictions").compute_dtype == "float32"
        assert amp_rewrite_enabled() == (config.precision == "amp_rewrite")
        assert autoclustering_enabled() == (config.xla == "auto")
        assert model.jit_compile == (config.xla == "jit")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_vit_tiny_passes_check_model_in_every_precision(precision: str) -> None:
    """The transformer's nested layers change nothing: its LayerNorms, attention and position
    embedding compute in the mode's dtype, its head in float32."""
    from mpcore.models.registry import build_model

    config = RunConfig(precision, "off")
    with applied(config):
        model = compile_for(build_model("vit_tiny", 16), config, 1e-3)
        check_model(model, config)
        attention = model.get_layer("block0_attention")
        assert attention.compute_dtype == model.get_layer("patch_embedding").compute_dtype
        assert model.get_layer("predictions").compute_dtype == "float32"


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: c.name)
def test_applied_restores_every_global(config: RunConfig) -> None:
    before = GlobalState.capture()
    with applied(config):
        pass
    assert GlobalState.capture() == before


def test_applied_restores_globals_on_error() -> None:
    before = GlobalState.capture()
    with pytest.raises(RuntimeError, match="boom"), applied(RunConfig("amp_rewrite", "auto")):
        raise RuntimeError("boom")
    assert GlobalState.capture() == before
    assert not amp_rewrite_enabled()
    assert not autoclustering_enabled()


def test_applied_restores_a_non_default_outer_state() -> None:
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    tf.config.optimizer.set_jit(True)
    with applied(RunConfig("float32", "off")):
        assert keras.mixed_precision.dtype_policy().name == "float32"
        assert not autoclustering_enabled()
    assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
    assert autoclustering_enabled()


def test_clear_session_pitfall_is_caught() -> None:
    """Setting the policy and *then* clearing the session silently builds a float32 model."""
    config = RunConfig("mixed_float16", "off")
    with applied(config):
        keras.backend.clear_session()  # the pitfall: resets the policy to float32
        assert keras.mixed_precision.dtype_policy().name == "float32"
        model = _tiny_model(config)
        with pytest.raises(ModeMismatchError, match="computes in float32, expected float16"):
            check_model(model, config)


def test_missing_loss_scale_optimizer_is_caught() -> None:
    config = RunConfig("mixed_float16", "off")
    with applied(config):
        from mpcore.models.registry import build_model

        model = build_model("small", 8)
        model.compile(optimizer="adam", loss="mse", jit_compile=False, auto_scale_loss=False)
        with pytest.raises(ModeMismatchError, match="is not a LossScaleOptimizer"):
            check_model(model, config)


def test_wrong_jit_setting_is_caught() -> None:
    config = RunConfig("float32", "off")
    with applied(config):
        from mpcore.models.registry import build_model

        model = build_model("small", 8)
        model.compile(optimizer="adam", loss="mse", jit_compile=True)
        with pytest.raises(ModeMismatchError, match="jit_compile is True"):
            check_model(model, config)


def test_uncompiled_model_is_caught() -> None:
    config = RunConfig("float32", "off")
    with applied(config):
        from mpcore.models.registry import build_model

        with pytest.raises(ModeMismatchError, match="not compiled"):
            check_model(build_model("small", 8), config)


@pytest.mark.parametrize(
    ("parse", "name", "valid"),
    [(parse_precision, "float64", PRECISIONS), (parse_xla, "always", XLA_MODES)],
)
def test_unknown_names_list_the_valid_ones(parse, name: str, valid: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=f"unknown .*'{name}'") as raised:
        parse(name)
    assert all(option in str(raised.value) for option in valid)


def test_run_config_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="valid: float32, mixed_float16"):
        RunConfig("fp16", "off")
    with pytest.raises(ValueError, match="valid: off, jit, auto"):
        RunConfig("float32", "yes")


def test_loss_scaling_exactly_for_float16_modes() -> None:
    assert {c.precision for c in ALL_CONFIGS if c.uses_loss_scaling} == {
        "mixed_float16",
        "amp_rewrite",
    }


# One negative test per check of check_model: each model or process state breaks exactly one
# check, and the test asserts that check's whole message (so disabling the check fails it).


def _only_problem(model: keras.Model, config: RunConfig) -> str:
    """The one problem check_model reports for ``model`` under ``config``."""
    with pytest.raises(ModeMismatchError) as caught:
        check_model(model, config)
    message = str(caught.value)
    assert message.startswith(f"{config.name}: ") and ";" not in message, message
    return message.removeprefix(f"{config.name}: ")


def _two_layer(hidden_dtype: str | None, tail: keras.layers.Layer | None = None) -> keras.Model:
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, dtype=hidden_dtype, name="hidden")(inputs)
    x = keras.layers.Dense(2, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, tail(x) if tail is not None else x)


def test_float16_variables_are_caught() -> None:
    config = RunConfig("mixed_float16", "off")
    with applied(config):
        model = compile_for(_two_layer("float16"), config, 1e-3)  # a pure float16 layer
        assert _only_problem(model, config) == (
            "layer hidden keeps variables in float16, expected float32"
        )


def test_float16_output_is_caught() -> None:
    config = RunConfig("float32", "off")
    with applied(config):
        to_half = keras.layers.Activation("linear", dtype="float16", name="to_half")
        model = compile_for(_two_layer(None, to_half), config, 1e-3)
        assert model.outputs[0].dtype == "float16"
        problem = _only_problem(model, config)
        assert problem.startswith("model output ") and problem.endswith(
            " is float16, expected float32"
        ), problem


def test_autoclustering_left_on_under_xla_off_is_caught() -> None:
    config = RunConfig("float32", "off")
    with applied(config):
        model = compile_for(_two_layer(None), config, 1e-3)
        check_model(model, config)  # clean until the global is switched on
        tf.config.optimizer.set_jit("autoclustering")  # applied() restores it on exit
        assert _only_problem(model, config) == "auto-clustering is on"
    assert not autoclustering_enabled()


def test_grappler_rewrite_left_on_under_float32_is_caught() -> None:
    config = RunConfig("float32", "off")
    with applied(config):
        model = compile_for(_two_layer(None), config, 1e-3)
        check_model(model, config)
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision": True})
        assert _only_problem(model, config) == "grappler auto_mixed_precision is on"
    assert not amp_rewrite_enabled()
