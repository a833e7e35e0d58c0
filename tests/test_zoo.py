"""Every model of the zoo (``tests/zoo_models.py``) through every command that takes a model:
``check``, ``profile``, ``run --model`` and ``pytest benchmarks/ --mp-model``. Each either gives
a real answer or refuses in one line (exit 2) naming what is unsupported.

The cheap models run ``check`` in the default suite; the Keras Applications builders, the
``profile`` of every model and ``run --model`` (worker processes) are marked slow, but for one
representative each. ``run`` and the benchmarks train a model in float32 and mixed_float16; in
the default suite a Keras Application is trained by ``run`` in float32 and by the benchmarks in
mixed_float16 (:func:`run_precisions`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import zoo_models
from scenarios import Run, run_in_process
from zoo_models import ZOO

from mpcore.check.api import check
from mpcore.precision.census import gradient_census
from mpcore.probe.peaks import FAKE_GPU_ENV
from mpcore.user.data import loss_function, random_batch, resolve_loss
from mpcore.user.loader import load_model

pytest_plugins = ("pytester",)
pytestmark = pytest.mark.cpu(reason="the zoo's models are checked and timed on the CPU")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TRAIN_STEP = str(BENCHMARKS / "test_train_step.py")
PLUGIN = ("-p", "mpcore.bench.plugin", "--noconftest", "--import-mode=importlib")
TINY = ("--mp-batch=4", "--mp-steps=1", "--mp-rounds=1", "--mp-warmup-rounds=0")

LIGHT = [name for name, entry in ZOO.items() if not entry.heavy]
HEAVY = [name for name, entry in ZOO.items() if entry.heavy]
#: Profiled in the default suite: the shapes the profile could not time before.
PROFILED_CHEAPLY = ("subclassed",)


@pytest.fixture(autouse=True)
def zoo_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``zoo_models:NAME`` specs import in this process (conftest.py) and in children."""
    paths = [str(Path(zoo_models.__file__).parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


#: Set to run every zoo model through the costly commands (about an hour on 2 busy cores): the
#: default suite runs a representative few of them (REPRESENTATIVE), the rest skip with a reason.
EVERY_MODEL_ENV = "MPBENCH_ZOO"
EVERY_MODEL = bool(os.environ.get(EVERY_MODEL_ENV))
#: The shapes that went wrong before (a subclassed model, a text model, a fully convolutional
#: one, a Keras Application - the one with the fewest layers, as tracing cost follows the layer
#: count): what the default suite trains and benchmarks for real.
REPRESENTATIVE = ("subclassed", "text_lstm", "fully_convolutional", "mobilenet")
_ALL_OF_THEM = pytest.mark.skipif(
    not EVERY_MODEL,
    reason=f"{EVERY_MODEL_ENV}=1 runs every zoo model here (about an hour); "
    f"the default suite runs {', '.join(REPRESENTATIVE)}",
)


def run_precisions(name: str) -> list[str]:
    """What ``run`` trains zoo model ``name`` under: float32 and mixed_float16; a Keras
    Application float32 only in the default suite (both with :data:`EVERY_MODEL_ENV`). Each
    configuration of an Application traces its whole training step, 91 to 250 layers, in a worker
    of its own (seconds on a CPU, mixed_float16's the longest: casts and the loss scale). Its
    mixed_float16 copy (converted, loss-scaled) trains through the same ``model.fit`` in
    :func:`test_benchmarks_run_every_zoo_model` and is checked by ``check``; the worker's own
    code does not depend on the model."""
    if ZOO[name].heavy and not EVERY_MODEL:
        return ["float32"]
    return ["float32", "mixed_float16"]


def benchmarked_precisions(name: str) -> list[str]:
    """What the benchmarks time zoo model ``name`` under: float32, mixed_float16 and float8; a
    Keras Application without float32 in the default suite (:func:`run_precisions` trains it)."""
    if ZOO[name].heavy and not EVERY_MODEL:
        return ["mixed_float16", "float8"]
    return ["float32", "mixed_float16", "float8"]


def _params(names: list[str], cheap: tuple[str, ...] = ()) -> list:
    """``names`` as parameters: those in ``cheap`` unmarked, the representative ones ``slow``,
    the rest ``slow`` and run only with :data:`EVERY_MODEL_ENV`."""
    return [
        pytest.param(
            n,
            marks=[]
            if n in cheap
            else [pytest.mark.slow]
            if n in REPRESENTATIVE
            else [pytest.mark.slow, _ALL_OF_THEM],
            id=n,
        )
        for n in names
    ]


def assert_refused(entry: zoo_models.Entry, code: int, out: str, err: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and entry.expected in lines[0], err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("name", [*_params(LIGHT, tuple(LIGHT)), *_params(HEAVY)])
def test_check_answers_or_refuses_in_one_line(invoke, tmp_path: Path, name: str) -> None:
    entry = ZOO[name]
    code, out, err = invoke(
        ["check", f"zoo_models:{name}", "--batch-size", "4", "--json", "--out", str(tmp_path)]
    )
    if entry.refused:
        assert_refused(entry, code, out, err)
        return
    assert code in (0, 1), err
    document = json.loads(out)
    (report,) = document["precisions"]
    assert report["verdict"] and report["layers"], name
    assert math.isfinite(report["loss_float32"])
    assert report["census"]["overall"]["count"] > 0  # gradients reached the census
    assert document["forward_flops"] > 0 or not entry.dense
    # Every model's training memory is predicted (on one sample where it has no graph of sizes)
    assert set(document["predicted_memory"]) == {"float32", "mixed_float16"}, document[
        "predicted_memory_note"
    ]


@pytest.mark.parametrize("name", [*_params(LIGHT, PROFILED_CHEAPLY), *_params(HEAVY)])
def test_profile_answers_or_refuses_in_one_line(invoke, tmp_path: Path, name: str) -> None:
    entry = ZOO[name]
    argv = ["profile", f"zoo_models:{name}", "--batch-size", "2", "--steps", "1", "--rounds", "1"]
    argv += ["--xla", "off", "--precision", "mixed_bfloat16", "--json", "--out", str(tmp_path)]
    code, out, err = invoke(argv)
    if entry.refused:
        assert_refused(entry, code, out, err)
        return
    assert code == 0, err
    document = json.loads(out)
    timed = {layer["name"] for layer in document["layers"]}
    assert timed, f"{name}: no layer timed"
    assert set(document["step_ms"]) == {"float32+xla_off", "mixed_bfloat16+xla_off"}


# ---------------------------------------------------------------------------------------------
# What the table broke, one test each


def test_subclassed_model_check_names_its_layers_and_matches_its_functional_twin() -> None:
    subclassed = check("zoo_models:subclassed", batch_size=4, seed=1)
    twin = check("zoo_models:functional_twin", batch_size=4, seed=1)
    (sub,), (fun,) = subclassed.precisions, twin.precisions
    assert [r.name for r in sub.layers] == [r.name for r in fun.layers]
    assert [r.name for r in sub.layers] == ["conv", "pool", "hidden", "probs"]
    assert sub.verdict == fun.verdict
    assert [(f.kind, f.layer) for f in sub.findings] == [(f.kind, f.layer) for f in fun.findings]
    # The head computes in float32, the rest in float16, as for the Functional clone.
    assert {r.name: r.compute_dtype for r in sub.layers} == {
        r.name: r.compute_dtype for r in fun.layers
    }
    assert sub.layers[-1].compute_dtype == "float32"
    assert "subclassed SubCNN" in subclassed.layers_shown
    assert subclassed.forward_flops == twin.forward_flops > 0


def test_subclassed_object_is_made_again_from_its_config_or_refused_in_one_line() -> None:
    from mpcore.user.loader import LoadError, convert

    half = convert(zoo_models.subclassed(), "mixed_float16", compile=False)  # from_config
    assert [layer.compute_dtype for layer in half.layers] == ["float16"] * 3 + ["float32"]
    with pytest.raises(LoadError, match=r"^opaque: the subclassed Opaque cannot be made again"):
        convert(zoo_models.opaque(), "mixed_float16")
    # Given as a factory it is called again under the policy instead.
    assert check("zoo_models:opaque", batch_size=4).precisions[0].verdict


def test_embedding_lstm_gets_a_gradient_census_and_a_loss_scale_window() -> None:
    loaded = load_model("zoo_models:text_lstm")
    loss, _ = resolve_loss(loaded.model, None)
    batch = random_batch(loaded.model, 4, loss)
    census = gradient_census(loaded.model, batch, 2.0**15, "float16", loss_function(loss))
    embedding = next(v for v in census.per_variable if "embed" in v.name)
    assert embedding.shape == [zoo_models.VOCABULARY, 16]
    assert embedding.census["count"] > 0  # the IndexedSlices rows the batch touched
    (report,) = check(loaded, batch).precisions
    assert report.window.low is not None and report.window.low <= report.window.high


def test_fully_convolutional_model_gets_flops_for_the_batch_shape() -> None:
    def expected(side: int) -> int:
        conv1 = 2 * side * side * 8 * (3 * 3 * 3)  # 'same' padding
        after = (side - 3) // 2 + 1  # 3x3 stride 2, 'valid'
        conv2 = 2 * after * after * 16 * (3 * 3 * 8)
        return conv1 + conv2 + 2 * zoo_models.CLASSES * 16

    for side in (16, 24):
        report = check("zoo_models:fully_convolutional", batch_size=2, unknown_size=side)
        assert report.forward_flops == expected(side)


def test_convnext_converts_with_its_add_operations() -> None:
    from mpcore.user.loader import convert

    model = zoo_models.convnext_tiny()
    half = convert(model, "mixed_float16", compile=False)
    assert half.layers[-1].compute_dtype == "float32"
    assert {layer.compute_dtype for layer in half.layers if layer.weights} == {
        "float16",
        "float32",
    }
    np.testing.assert_array_equal(half.get_weights()[0], model.get_weights()[0])


def test_lambda_model_converts_in_process() -> None:
    from mpcore.user.loader import convert

    half = convert(zoo_models.with_lambda(), "mixed_bfloat16", compile=False)
    assert half.get_layer("scale").compute_dtype == "bfloat16"


def test_legacy_h5_gets_labels_for_its_sparse_loss(tmp_path: Path) -> None:
    path = zoo_models.legacy_h5(str(tmp_path / "model.h5"))
    report = check(path, batch_size=4)
    assert "sparse_categorical_crossentropy" in report.loss
    assert report.precisions[0].verdict


@pytest.mark.parametrize(
    ("name", "loss"),
    [
        ("logits_head", "sparse_categorical_crossentropy (from_logits)"),
        ("binary_head", "binary_crossentropy"),
        ("multi_label", "binary_crossentropy"),
        ("regression", "mean_squared_error"),
        ("multi_output", "sparse_categorical_crossentropy, mean_squared_error"),
        ("dict_outputs", "sparse_categorical_crossentropy, binary_crossentropy"),
    ],
)
def test_heads_get_their_loss_and_labels_that_fit_it(name: str, loss: str) -> None:
    model = ZOO[name].factory()
    chosen, label = resolve_loss(model, None)
    assert loss in label
    x, y = random_batch(model, 4, chosen)
    value = float(loss_function(chosen)(y, model(x)))
    assert math.isfinite(value) and value > 0


def test_linear_head_on_class_labels_is_read_as_logits() -> None:
    from mpcore.user.ownmodel import user_loss

    loss, metrics = user_loss(zoo_models.logits_uncompiled(), class_labels=True)
    assert loss.get_config()["from_logits"] and metrics == ["accuracy"]


@pytest.mark.parametrize("name", [n for n in LIGHT if ZOO[n].refused])
def test_unusable_model_is_refused_before_training(invoke, tmp_path: Path, name: str) -> None:
    code, out, err = invoke(["run", "--model", f"zoo_models:{name}", "--out", str(tmp_path / "r")])
    assert_refused(ZOO[name], code, out, err)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# pytest benchmarks/ --mp-model=zoo_models:NAME


def collected(pytester: pytest.Pytester, name: str) -> dict[str, str | None]:
    items, _ = pytester.inline_genitems(
        TRAIN_STEP, *PLUGIN, f"--mp-model=zoo_models:{name}", "--mp-allow-cpu", *TINY
    )
    skips = {}
    for item in items:
        mark = item.get_closest_marker("skip")
        skips[item.callspec.id] = mark.kwargs["reason"] if mark else None
    return skips


H100 = "NVIDIA H100 80GB HBM3@9.0"


@pytest.mark.parametrize(
    ("gpu", "name"),
    [
        ("none", "subclassed"),
        (H100, "subclassed"),
        (H100, "fully_convolutional"),
        pytest.param("none", "text_gru", marks=pytest.mark.slow),
        pytest.param(H100, "text_gru", marks=pytest.mark.slow),
    ],
)
def test_benchmarks_collect_a_users_model_with_float8_where_it_has_dense_layers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, gpu: str, name: str
) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, gpu)
    skips = collected(pytester, name)
    assert len(skips) == 15, skips
    float8 = skips["float8-off-fit"]
    if ZOO[name].dense:
        assert float8 is None  # runs: on the CPU emulated, on the H100 on its FP8 tensor cores
    else:
        assert "no Dense or EinsumDense layer" in float8


def test_benchmarks_make_no_float8_copy_of_a_model_float8_skips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mpcore.user import ownmodel

    loaded = ownmodel.load_float32("zoo_models:fully_convolutional")
    made = []
    real = ownmodel.under_precision
    monkeypatch.setattr(
        ownmodel, "under_precision", lambda *args: made.append(args[1]) or real(*args)
    )
    # The benchmarks' check (float8 skipped without Dense layers): the float8 copy is not made
    assert ownmodel.conversion_problem(loaded, ["mixed_float16", "float8"], False) is None
    assert made == ["mixed_float16"]
    # run's check refuses float8 for it, as before
    problem = ownmodel.conversion_problem(loaded, ["float8"])
    assert "has no Dense or EinsumDense layer besides its head" in problem


@pytest.mark.parametrize("name", [n for n in LIGHT if ZOO[n].refused])
def test_benchmarks_refuse_an_unusable_model_in_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, "none")
    result = pytester.runpytest(
        TRAIN_STEP, *PLUGIN, f"--mp-model=zoo_models:{name}", "--mp-allow-cpu", *TINY
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --mp-model: *{ZOO[name].expected}*"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize("name", _params([*LIGHT, *HEAVY]))
def test_benchmarks_run_every_zoo_model(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(FAKE_GPU_ENV, "none")
    precisions = benchmarked_precisions(name)
    argv = [TRAIN_STEP, *PLUGIN, f"--mp-model=zoo_models:{name}", "--mp-allow-cpu", *TINY]
    argv += ["--mp-xla=off", f"--mp-precision={','.join(precisions)}", "-p", "no:random_order"]
    result = pytester.runpytest(*argv)
    if ZOO[name].refused:
        result.stderr.fnmatch_lines([f"ERROR: --mp-model: *{ZOO[name].expected}*"])
        return
    outcomes = result.parseoutcomes()
    # float8 skips a model with no Dense layer besides its head: nothing to quantize.
    expected = len(precisions) - (not ZOO[name].dense)
    assert outcomes.get("passed", 0) == expected, result.stdout.str()[-3000:]
    assert "error" not in outcomes and "failed" not in outcomes


# ---------------------------------------------------------------------------------------------
# mpbench run --model zoo_models:NAME (worker processes)


def run_model(tmp_path: Path, name: str, *extra: str) -> Run:
    """``mpbench run --model zoo_models:NAME`` in this process (its workers are processes of
    their own, which import the model as a user's would): the parent's own start-up in a child
    would prove nothing the workers do not."""
    entry = ZOO[name]
    data = [] if entry.ship_images else ["--data", f"zoo_models:data_{name}"]
    argv = ["run", "--model", f"zoo_models:{name}", *data, "--epochs", "1", "--repeats", "1"]
    argv += ["--batch-size", "8", "--xla", "off", "--precision", ",".join(run_precisions(name))]
    return run_in_process([*argv, *extra], tmp_path, tmp_path / "cache")


# One xdist worker runs them all, one after another: their workers are forked from one fork
# server (kept_fork_servers), which imported TensorFlow once (about 6 core-seconds); spread over
# the workers of ``pytest -n``, each worker started a server of its own for this environment
# (PYTHONPATH naming this folder and the ``cpu`` marker's variables: few other tests' fit).
@pytest.mark.xdist_group("zoo-runs")
@pytest.mark.parametrize("name", _params([*LIGHT, *HEAVY]))
def test_run_trains_every_zoo_model_or_refuses(tmp_path: Path, name: str) -> None:
    entry = ZOO[name]
    result = run_model(tmp_path, name, "--synthetic-per-class", "4")
    if entry.refused:
        assert result.code == 2, result.stderr
        assert entry.expected in result.stderr and "Traceback" not in result.stderr
        return
    assert result.code == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = result.document["configurations"]
    assert [r["config"]["precision"] for r in records] == run_precisions(name), records
    assert [r["status"] for r in records] == ["ok"] * len(records), records


def test_every_head_is_held_to_float32_whatever_its_activation() -> None:
    from mpcore.precision.modes import ModeMismatchError, RunConfig, applied
    from mpcore.train.fit import compile_for
    from mpcore.user.ownmodel import build_user_model, verify

    config = RunConfig("mixed_float16", "off")
    with applied(config):
        model, loss, metrics = build_user_model(config, "zoo_models:multi_output", None)
        compile_for(model, config, 1e-3, loss=loss, metrics=metrics)
        assert verify(model, config)
        model.get_layer("box").dtype_policy = "mixed_float16"  # the linear head, in half
        with pytest.raises(ModeMismatchError, match="layer box computes in float16"):
            verify(model, config)
