"""mpcore.precision.fp8: which layers float8 quantization touches, and the report a mode check
uses."""

from __future__ import annotations

import warnings

import keras
import pytest

from mpcore.models.registry import build_model
from mpcore.precision.fp8 import FLOAT8_BASE_POLICY, float8_report, quantize_float8
from mpcore.precision.modes import RunConfig, applied


def test_vit_tiny_quantizes_every_dense_and_einsum_dense_but_the_head() -> None:
    with applied(RunConfig(FLOAT8_BASE_POLICY)):
        model = build_model("vit_tiny", 16)
        before = float8_report(model)
        names = quantize_float8(model)
        # patch embedding + 3 blocks x (query, key, value, attention_output, mlp1, mlp2)
        assert len(names) == len(before) == 19
        assert float8_report(model) == []
        assert model.get_layer("patch_embedding").dtype_policy.name == (
            "float8_from_mixed_bfloat16"
        )
        head = model.get_layer("predictions")
        assert head.quantization_mode is None and head.compute_dtype == "float32"


def test_a_model_with_only_its_head_is_refused_in_one_line() -> None:
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(inputs)
    model = keras.Model(inputs, outputs, name="head_only")
    with pytest.raises(ValueError, match=r"^model head_only has no Dense or EinsumDense layer"):
        quantize_float8(model)
    assert float8_report(model) == ["model head_only has no Dense or EinsumDense layer to quantize"]


def test_a_quantized_head_is_reported() -> None:
    with applied(RunConfig(FLOAT8_BASE_POLICY)):
        model = build_model("small", 8)
        with warnings.catch_warnings():
            # Unfiltered, Keras warns once per layer type it cannot quantize (Conv2D, ReLU...);
            # quantize_float8 quantizes only its candidates, one by one, and warns about none.
            warnings.simplefilter("ignore", UserWarning)
            model.quantize("float8")
        assert float8_report(model) == [
            "head predictions is quantized to float8",
        ]


@pytest.mark.parametrize("name", ["small", "resnet50", "vit_tiny"])
def test_registry_says_which_models_float8_can_quantize(name: str) -> None:
    from mpcore.models.registry import model_spec
    from mpcore.precision.fp8 import float8_candidates

    with applied(RunConfig("float32")):
        model = build_model(name, model_spec(name).min_image_size)
        assert model_spec(name).float8_layers == bool(float8_candidates(model))


def test_float8_mode_builds_a_quantized_model_that_check_model_accepts() -> None:
    from mpcore.precision.fp8 import float8_candidates
    from mpcore.precision.modes import ModeMismatchError, check_model
    from mpcore.train.fit import build_compiled, compile_for
    from mpcore.train.settings import TrainSettings

    config = RunConfig("float8", "off")
    with applied(config):
        model = build_compiled(config, TrainSettings(model="small", image_size=8))
        (body,) = float8_candidates(model)  # the Dense before the head
        assert body.quantization_mode == "float8"
        assert not config.uses_loss_scaling
        # The same model claimed as mixed_bfloat16 is refused: it holds float8 layers.
        with pytest.raises(ModeMismatchError, match=f"layer {body.name} is quantized to float8"):
            check_model(model, RunConfig("mixed_bfloat16", "off"))
    # A float8 claim on a model that was never quantized is refused too.
    with applied(RunConfig("mixed_bfloat16")):
        plain = compile_for(build_model("small", 8), RunConfig("mixed_bfloat16"), 1e-3)
        (body,) = float8_candidates(plain)
        with pytest.raises(ModeMismatchError, match=f"layer {body.name} is not quantized"):
            check_model(plain, config)
