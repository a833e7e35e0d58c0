"""A subclassed model's ``check`` report is as full as its Functional twin's: each layer's own
error, the predicted memory, and the refusal of labels beyond the model's classes. A fully
convolutional model's memory is predicted for the batch's image size (in ``check`` and
``maxbatch``). What the full zoo run found: several inputs or outputs reach the benchmarks' step
and ``run --model``'s array pipeline as tuples, and arrays whose labels do not fit the loss are
refused before anything trains. Tiny models, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zoo_models

from mpcore.check.api import check
from mpcore.models.memory import predict_memory
from mpcore.precision.modes import RunConfig, applied
from mpcore.user.loader import LoadError

pytestmark = pytest.mark.cpu(reason="tiny zoo models checked on the CPU")


@pytest.fixture(scope="module")
def reports() -> dict:
    """``check`` of the subclassed model and of its Functional twin, on the same batch."""
    return {
        name: check(f"zoo_models:{name}", batch_size=4, seed=3)
        for name in ("subclassed", "functional_twin")
    }


def test_subclassed_layers_have_their_own_error_as_the_twin_does(reports: dict) -> None:
    (sub,), (twin,) = reports["subclassed"].precisions, reports["functional_twin"].precisions
    own = {row.name: row.own_error for row in sub.layers}
    assert set(own) == {"conv", "pool", "hidden", "probs"}
    assert all(value is not None for value in own.values()), own
    assert {r.name for r in twin.layers if r.own_error is not None} == set(own)
    first = sub.layers[0]
    # The first layer is fed the batch itself in both passes: its own error is all it has.
    assert first.own_error == pytest.approx(first.relative_error)
    # The float32 head run alone on the float32 input computes exactly what float32 does ...
    assert own["probs"] == 0.0
    # ... while fed the half layers' outputs it inherits their error.
    assert sub.layers[-1].relative_error > 0
    # A float16 layer's own error is float16's rounding (2**-11 relative), not a lost layer.
    assert 0 < own["hidden"] < 2**-8


def test_labels_beyond_a_subclassed_models_classes_are_refused(tmp_path: Path) -> None:
    x = zoo_models.random_images(4)
    bad = np.array([0, 1, 2, zoo_models.CLASSES + 2])
    with pytest.raises(LoadError, match=r"labels span 0\.\.7, but the model's output 'probs' has"):
        check("zoo_models:subclassed", (x, bad))
    onehot = np.eye(zoo_models.CLASSES, dtype="float32")[[0, 1, 2, 3]]
    with pytest.raises(LoadError, match="one-hot labels want categorical_crossentropy"):
        check("zoo_models:subclassed", (x, onehot))


def test_labels_beyond_the_classes_refused_by_the_cli_in_one_line(invoke, tmp_path: Path) -> None:
    data = tmp_path / "bad.npz"
    np.savez(data, x=zoo_models.random_images(4), y=np.array([0, 1, 9, 2]))
    code, out, err = invoke(
        ["check", "zoo_models:subclassed", "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert "labels span 0..9" in line and "5 classes" in line
    assert "Traceback" not in out + err


def _sample(side: int) -> np.ndarray:
    return np.zeros((1, side, side, 3), "float32")


def test_subclassed_memory_is_predicted_as_for_its_functional_twin() -> None:
    subclassed = predict_memory(zoo_models.subclassed(), 8, sample=_sample(zoo_models.SIDE))
    twin = predict_memory(zoo_models.functional_twin(), 8)
    assert subclassed.activation_bytes_per_sample == twin.activation_bytes_per_sample > 0
    assert subclassed.fixed_bytes == twin.fixed_bytes
    with pytest.raises(ValueError, match="no graph of known sizes"):
        predict_memory(zoo_models.subclassed(), 8)  # nothing to count it on


def test_fully_convolutional_memory_is_counted_for_the_samples_image_side() -> None:
    def expected(side: int) -> int:  # float32 bytes of the input and of each layer's output
        after = (side - 3) // 2 + 1  # conv2: 3x3 stride 2, 'valid'
        return 4 * (side * side * 3 + side * side * 8 + after * after * 16 + 16 + 5)

    model = zoo_models.fully_convolutional()
    for side in (16, 32):
        estimate = predict_memory(model, 8, sample=_sample(side))
        assert estimate.activation_bytes_per_sample == expected(side)


def test_check_json_holds_the_subclassed_models_memory(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mpcore.check import api
    from mpcore.user import ownmodel

    converted = []
    for module in (api, ownmodel):
        real = module.convert
        monkeypatch.setattr(
            module,
            "convert",
            lambda model, precision, *a, real=real, **k: (
                converted.append(precision) or real(model, precision, *a, **k)
            ),
        )
    code, out, err = invoke(
        ["check", "zoo_models:subclassed", "--batch-size", "4", "--json", "--out", str(tmp_path)]
    )
    assert code in (0, 1), err
    document = json.loads(out)
    assert document["inputs"] == [
        {"shape": [4, zoo_models.SIDE, zoo_models.SIDE, 3], "dtype": "float32"}
    ]
    memory = document["predicted_memory"]
    assert set(memory) == {"float32", "mixed_float16"}, document["predicted_memory_note"]
    assert (
        memory["mixed_float16"]["activation_bytes_per_sample"]
        < memory["float32"]["activation_bytes_per_sample"]
    )
    assert document["predicted_memory_note"] is None
    # The memory is predicted on the copy the check judged, not on one more conversion
    assert converted.count("mixed_float16") == 1, converted
    with applied(RunConfig("mixed_float16", "off")):
        fresh = ownmodel.under_precision(
            ownmodel.load_float32("zoo_models:subclassed"), "mixed_float16"
        )
        sample = np.zeros((1, zoo_models.SIDE, zoo_models.SIDE, 3), "float32")
        assert memory["mixed_float16"] == predict_memory(fresh, 4, sample=sample).to_dict()


@pytest.mark.parametrize("name", ["multi_input", "multi_output"])
def test_benchmark_fit_step_takes_several_inputs_or_outputs(name: str) -> None:
    """The benchmarks' resident batch of a model with two inputs (or two outputs) is a tuple:
    tf.data packs a list into one tensor, which fails for an image and a feature vector."""
    from mpcore.bench.stepbench import fit_train_step, user_model_step
    from mpcore.precision.modes import RunConfig, applied
    from mpcore.train.settings import TrainSettings

    config = RunConfig("float32", "off")
    settings = TrainSettings(model=f"zoo_models:{name}", batch_size=4)
    with applied(config):
        model, _, (x, y) = user_model_step(config, settings, "/CPU:0")
        assert isinstance(x if name == "multi_input" else y, tuple)
        loss = float(fit_train_step(model, x, y)())
    assert np.isfinite(loss)


@pytest.mark.parametrize("shuffle", [False, True])
def test_run_pipeline_of_arrays_keeps_several_inputs_apart(shuffle: bool) -> None:
    """``run --model --data`` of a two-input model: each batch is (image, features), labels."""
    from mpcore.user.ownmodel import ArraySplit

    x, y = zoo_models.zoo_data("multi_input", samples=6)
    (images, features), labels = next(iter(ArraySplit(x, y).dataset(4, shuffle=shuffle)))
    assert images.shape == (4, zoo_models.SIDE, zoo_models.SIDE, 3)
    assert features.shape == (4, 6) and labels.shape == (4,)


def test_run_refuses_labels_that_do_not_fit_the_loss_before_training(
    invoke, tmp_path: Path
) -> None:
    """A regression head's 2 values against one label per sample: refused in one line, not
    failed late in every configuration's worker."""
    data = tmp_path / "flat.npz"
    np.savez(data, x=zoo_models.random_images(10), y=np.zeros(10, "float32"))
    argv = ["run", "--model", "zoo_models:regression", "--data", str(data)]
    code, out, err = invoke([*argv, "--epochs", "1", "--out", str(tmp_path / "r")])
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert "Traceback" not in out + err
    assert "labels of shape () per sample do not fit the output 'values' of shape (2,)" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("name", "side"), [("subclassed", None), ("fully_convolutional", 16)])
def test_maxbatch_predicts_memory_of_a_model_without_a_graph_of_known_sizes(
    name: str, side: int | None
) -> None:
    """``mpbench maxbatch``'s prediction column: counted on one sample (``--image-size`` for the
    unknown sides), not a traceback."""
    from mpcore.face.maxbatch_cmd import predictions
    from mpcore.face.profile_cmd import load

    spec = f"zoo_models:{name}"
    estimates = predictions(load(spec, side), spec, ["float32", "mixed_float16"], 8, side)
    assert set(estimates) == {"float32", "mixed_float16"}
    full, half = (estimates[p].activation_bytes_per_sample for p in ("float32", "mixed_float16"))
    assert 0 < half < full
