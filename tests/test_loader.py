"""``mpcore.user.loader`` and ``mpcore.user.data``: user models and data from specs; bad input is
one ``LoadError`` line, and through ``mpbench check`` exit status 2 with one line."""

from __future__ import annotations

import check_models
import keras
import numpy as np
import pytest

from mpcore.precision.modes import RunConfig, applied
from mpcore.user.data import load_batch, random_batch, resolve_loss
from mpcore.user.loader import LoadError, convert, load_model, model_precision


def built(factory, precision: str = "float32") -> keras.Model:
    with applied(RunConfig(precision)):
        return factory()


def test_keras_file_round_trip(tmp_path):
    model = built(check_models.wide_dense)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    path = tmp_path / "wide.keras"
    model.save(path)
    loaded = load_model(path)
    assert (loaded.kind, loaded.source, loaded.model.name) == ("file", str(path), "wide_dense")
    for ours, theirs in zip(loaded.model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert resolve_loss(loaded.model, None)[1] == "compiled: sparse_categorical_crossentropy"


def test_factory_gets_only_the_keywords_it_names():
    loaded = load_model(
        "check_models:sized_factory", image_size=24, num_classes=5, input_shape=(1,)
    )
    assert loaded.model.name == "sized_24_5"
    assert load_model("check_models:wide_dense", image_size=24).model.name == "wide_dense"


def test_convert_keeps_pinned_float32_and_makes_heads_float32():
    half = built(check_models.softmax_head, "mixed_float16")
    assert model_precision(half) == "mixed_float16"
    clone = convert(half, "mixed_bfloat16")
    assert model_precision(clone) == "mixed_bfloat16"
    assert clone.get_layer("probs").compute_dtype == "float32"
    assert clone.get_layer("hidden").compute_dtype == "bfloat16"
    assert model_precision(convert(half, "float32")) == "float32"
    # The original keeps its policy: a model built under one policy keeps it.
    assert half.get_layer("probs").compute_dtype == "float16"


def test_convert_and_check_a_sequential_model():
    from mpcore.check.api import check

    with applied(RunConfig("float32")):
        model = keras.Sequential(
            [keras.Input((12,)), keras.layers.Dense(16), keras.layers.Dense(3, name="out")]
        )
    clone = convert(model, "mixed_float16")
    assert model_precision(clone) == "mixed_float16"
    assert clone.get_layer("out").compute_dtype == "float32"
    report = check(model)
    assert [row.name for row in report.precisions[0].layers][-1] == "out"


def test_convert_refuses_a_subclassed_model():
    model = check_models.Subclassed()
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(LoadError, match="Subclassed"):
        convert(model, "mixed_float16")


@pytest.mark.parametrize(
    ("loss", "dtype", "shape"),
    [
        ("sparse_categorical_crossentropy", np.int32, (4,)),
        ("categorical_crossentropy", np.float32, (4, 8)),
        ("mean_squared_error", np.float32, (4, 8)),
    ],
)
def test_random_batch_is_shaped_by_the_model_and_the_loss(loss, dtype, shape):
    model = built(check_models.softmax_head)
    x, y = random_batch(model, 4, loss, seed=3)
    assert x.shape == (4, 16) and y.shape == shape and y.dtype == dtype
    np.testing.assert_array_equal(random_batch(model, 4, loss, seed=3)[0], x)  # seeded
    if loss == "categorical_crossentropy":
        np.testing.assert_array_equal(y.sum(axis=1), 1.0)


def test_data_from_npz_function_and_dataset(tmp_path):
    model = built(check_models.overflow_model)
    x, y = check_models.overflow_data()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    for spec in (
        str(tmp_path / "d.npz"),
        "check_models:overflow_data",
        "check_models:overflow_dataset",
    ):
        bx, by = load_batch(spec, model, 3, "mse")
        np.testing.assert_array_equal(bx, x[:3])
        np.testing.assert_array_equal(by, y[:3])


def test_data_from_the_seed_layout(ship_root):
    model = load_model("check_models:sized_factory", image_size=32, num_classes=5).model
    x, y = load_batch(str(ship_root), model, 6, "sparse_categorical_crossentropy")
    assert x.shape == (6, 32, 32, 3) and x.min() >= 0.0 and x.max() <= 1.0
    assert y.shape == (6,) and set(y.tolist()) <= set(range(5))


def test_bad_npz_names_the_file(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((2, 8)))
    with pytest.raises(LoadError, match=r"d\.npz: no array x or y"):
        load_batch(str(tmp_path / "d.npz"), built(check_models.overflow_model), 2, "mse")


def _bad_inputs(tmp_path) -> list[tuple[list[str], str]]:
    (tmp_path / "notes.keras").write_text("not a zip")
    (tmp_path / "notes.txt").write_text("hello")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 5), np.float32), y=np.zeros((4, 8)))
    return [
        ([str(tmp_path / "missing.keras")], "missing.keras: file not found"),
        ([str(tmp_path / "notes.keras")], "notes.keras: not a loadable Keras model"),
        ([str(tmp_path / "notes.txt")], "notes.txt: not a .keras"),
        (["no_such_package_xyz.models:build"], "cannot import no_such_package_xyz.models"),
        (["check_models:missing_factory"], "check_models has no attribute 'missing_factory'"),
        (["check_models:not_a_model"], "check_models:not_a_model: returned a int"),
        (["check_models:raising_factory"], "the factory raised RuntimeError: no weights here"),
        (
            ["check_models:overflow_model", "--data", str(tmp_path / "wrong.npz")],
            "wrong.npz: samples of shape (5,) do not fit the model's input (8,)",
        ),
        (["check_models:overflow_model", "--loss", "no_such_loss"], "--loss no_such_loss"),
    ]


def test_bad_inputs_exit_2_with_one_line(invoke, tmp_path):
    for argv, expected in _bad_inputs(tmp_path):
        code, _out, err = invoke(["check", *argv, "--out", str(tmp_path / "out")])
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mpbench check: error: "), err
        assert expected in lines[0], (expected, lines[0])
