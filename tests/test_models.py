"""Models: the seed's ResNet50 transfer head, the small CNN, and weights handling."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from mpcore.models.registry import (
    RESNET50_NOTOP_FILE,
    WeightsError,
    build_model,
    model_spec,
    multiple_of_8_report,
)
from mpcore.precision.modes import RunConfig, applied


@pytest.fixture(scope="module")
def resnet50():
    return build_model("resnet50", 224, 5)


def test_resnet50_has_the_seed_parameter_count(resnet50) -> None:
    # ResNet50 without top (23,587,712) + Dense(2048 -> 5) (10,245).
    assert resnet50.count_params() == 23_597_957
    assert resnet50.input_shape == (None, 224, 224, 3)
    assert resnet50.output_shape == (None, 5)


def test_resnet50_head_is_a_float32_softmax_under_mixed_float16() -> None:
    with applied(RunConfig("mixed_float16", "off")):
        model = build_model("resnet50", 32, 5, float16_input=True)
    head = model.get_layer("predictions")
    assert head.compute_dtype == "float32"
    assert head.activation.__name__ == "softmax"
    assert model.get_layer("conv1_conv").compute_dtype == "float16"
    assert model.inputs[0].dtype == "float16"
    assert model.outputs[0].dtype == "float32"


def test_small_model_channel_counts_are_multiples_of_8() -> None:
    model = build_model("small", 32, 5)
    # Only the 5-class head may be off the multiple of 8: the class count is the data's.
    assert multiple_of_8_report(model) == ["predictions: units=5"]


def test_multiple_of_8_report_flags_odd_layers(resnet50) -> None:
    assert multiple_of_8_report(resnet50) == ["predictions: units=5"]
    odd = build_model("small", 32, 7)
    assert multiple_of_8_report(odd) == ["predictions: units=7"]


def test_vit_tiny_has_its_parameter_count_and_widths_multiple_of_16() -> None:
    """At 48 px: 36 patches of 8x8x3 = 192 values. Patch embedding 192*64 + 64 = 12,352;
    position embedding 36*64 = 2,304; per block two LayerNorms (2 * 128), attention
    4 * (64*64 + 64) = 16,640, MLP 64*128 + 128 + 128*64 + 64 = 16,576, so 33,472 x 3 blocks;
    final LayerNorm 128; head 64*5 + 5 = 325. Total 115,525."""
    model = build_model("vit_tiny", 48, 5)
    assert model.count_params() == 12_352 + 2_304 + 3 * 33_472 + 128 + 325 == 115_525
    assert model.output_shape == (None, 5)
    assert multiple_of_8_report(model) == ["predictions: units=5"]
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense) and layer.name != "predictions":
            assert layer.units % 16 == 0, layer.name
        if isinstance(layer, keras.layers.MultiHeadAttention):
            assert layer.num_heads * layer.key_dim % 16 == 0 and layer.key_dim % 16 == 0


def test_vit_tiny_crops_an_image_size_that_is_not_a_multiple_of_the_patch() -> None:
    """50 px keeps the central 48 px: the same 36 patches and parameters as at 48 px."""
    assert build_model("vit_tiny", 50).count_params() == 115_525
    assert build_model("vit_tiny", 8).count_params() == 115_525 - 35 * 64  # one patch
    with pytest.raises(ValueError, match="too small for model 'vit_tiny' \\(minimum 8\\)"):
        build_model("vit_tiny", 7)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg'; valid: resnet50, small, vit_tiny"):
        build_model("vgg")


def test_image_size_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="too small for model 'resnet50'"):
        build_model("resnet50", 16)


def test_imagenet_weights_are_never_downloaded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"not in the local Keras cache.*--weights FILE"):
        build_model("resnet50", 32, weights="imagenet")
    with pytest.raises(WeightsError, match="no ImageNet weights exist for model 'small'"):
        build_model("small", 32, weights="imagenet")


@pytest.mark.slow
def test_imagenet_weights_load_from_the_local_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    donor = build_model("resnet50", 32)
    backbone = keras.Model(donor.inputs, donor.get_layer("avg_pool").input)
    cached = tmp_path / "models" / RESNET50_NOTOP_FILE
    cached.parent.mkdir()
    # Keras-applications "notop" files are legacy HDF5 weight files keyed by layer name.
    with h5py.File(cached, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, backbone)
    loaded = build_model("resnet50", 32, weights="imagenet")
    np.testing.assert_array_equal(
        loaded.get_layer("conv1_conv").get_weights()[0],
        donor.get_layer("conv1_conv").get_weights()[0],
    )


def test_whole_model_weights_file_round_trips(tmp_path: Path) -> None:
    source = build_model("small", 32)
    path = tmp_path / "small.weights.h5"
    source.save_weights(path)
    loaded = build_model("small", 32, weights=path)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"weights file not found: .*absent\.weights\.h5"):
        build_model("small", 32, weights=tmp_path / "absent.weights.h5")


def test_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.weights.h5"
    build_model("small", 32, num_classes=3).save_weights(path)
    with pytest.raises(WeightsError, match=f"cannot load weights {path} into small"):
        build_model("small", 32, weights=path)


def test_model_specs_preprocess_in_float32() -> None:
    pixels = np.full((1, 4, 4, 3), 255, dtype=np.uint8)
    for name in ("small", "resnet50", "vit_tiny"):
        assert model_spec(name).preprocess(pixels).dtype == "float32"
