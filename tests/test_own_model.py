"""A user's own model through the loader's rebuild, the benchmarks, ``mpbench run`` and
``mpbench profile``, with the test model of ``tests/own_models.py`` (a MobileNet-like depthwise
block and an UpSampling2D decoder block), at tiny sizes on the CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scenarios import run_in_process

from mpcore.bench.layerprofile import LayerProfile, profile_layers
from mpcore.precision.modes import RunConfig, applied
from mpcore.user.loader import load_model
from mpcore.user.ownmodel import load_float32

TESTS = Path(__file__).resolve().parent
BENCHMARKS = TESTS.parent / "benchmarks"
SPEC = "own_models:mobile_up"

pytest_plugins = ("pytester",)


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``own_models:NAME`` specs import in this process and in children."""
    monkeypatch.syspath_prepend(str(TESTS))
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


# --------------------------------------------------------------------------------------------
# The loader's rebuild under each precision


def test_build_converts_with_float32_head_and_keeps_a_matching_model() -> None:
    loaded = load_float32(SPEC, 16)
    assert loaded.build("float32") is loaded.model
    half = loaded.build("mixed_float16")
    assert half is not loaded.model
    dtypes = {layer.name: layer.compute_dtype for layer in half.layers}
    assert dtypes["depthwise"] == dtypes["upsample"] == "float16"
    assert dtypes["probs"] == "float32" and half.outputs[0].dtype == "float32"
    for before, after in zip(loaded.model.weights, half.weights, strict=True):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    with applied(RunConfig("mixed_bfloat16")):
        built_half = load_model(SPEC, image_size=16)
    assert built_half.build("mixed_bfloat16") is built_half.model


# --------------------------------------------------------------------------------------------
# Bad model specs: one line naming the spec, exit 2, nothing written


@pytest.mark.parametrize("command", ["run", "profile"])
@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("own_models:missing", "has no attribute 'missing'"),
        ("own_models:raises", "the factory raised RuntimeError: the factory broke"),
        ("own_models:not_a_model", "returned a str, not a Keras model"),
        ("corrupt.keras", "not a loadable Keras model"),
    ],
)
def test_bad_model_spec_is_one_line_exit_2(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, spec: str, says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.keras").write_bytes(b"not a zip file")
    out = tmp_path / "out"
    model = ["--model", spec] if command == "run" else [spec]
    code, _, stderr = invoke([command, *model, "--out", str(out)])
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and spec in lines[0] and says in lines[0], stderr
    assert "Traceback" not in stderr and not out.exists()
    assert (tmp_path / "corrupt.keras").read_bytes() == b"not a zip file"


def test_non_image_model_needs_array_data(invoke, tmp_path: Path) -> None:
    code, _, stderr = invoke(["run", "--model", "own_models:tabular", "--out", str(tmp_path / "o")])
    assert code == 2 and "own_models:tabular: takes [(12,)], not one square RGB image" in stderr
    assert len(stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# The benchmarks


@pytest.mark.slow
def test_benchmarks_time_the_users_model(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("MPBENCH_FAKE_GPU", "none")
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    output = pytester.path / "bench.json"
    result = pytester.runpytest(
        str(BENCHMARKS / "test_train_step.py"),
        "-p",
        "mpcore.bench.plugin",
        "--noconftest",
        "-p",
        "no:random_order",
        "--import-mode=importlib",
        "--mp-allow-cpu",
        f"--mp-model={SPEC}",
        "--mp-image-size=16",
        "--mp-batch=4",
        "--mp-steps=1",
        "--mp-rounds=1",
        "--mp-warmup-rounds=0",
        "--mp-precision=float32,mixed_float16",
        "--mp-xla=off",
        f"--benchmark-json={output}",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"{SPEC} 16px batch 4 on CPU, fit step"])
    benches = json.loads(output.read_text())["benchmarks"]
    parameters = load_float32(SPEC, 16).model.count_params()
    for bench in benches:
        info = bench["extra_info"]
        assert info["model"] == SPEC and info["model_source"] == "factory"
        assert info["parameters"] == parameters and info["forward_flops_per_sample"] > 0
        assert info["mode_checked"] is True and info["image_size"] == 16
    assert {b["extra_info"]["precision"] for b in benches} == {"float32", "mixed_float16"}


@pytest.mark.parametrize(("given", "expected"), [(None, 32), (24, 24)])
def test_the_benchmarks_offer_a_factory_the_cpus_size(given: int | None, expected: int) -> None:
    """With --mp-allow-cpu and no GPU a factory is offered the CPU's default side (32 px), as the
    registry models get, unless --mp-image-size names one (this factory's own default is 16)."""
    from types import SimpleNamespace

    from mpcore.bench import plugin

    config = SimpleNamespace(getoption=lambda name: given if name == "mp_image_size" else None)
    default = plugin.CPU_DEFAULTS["image_size"]
    assert plugin._user_model_shape(config, SPEC, default) == (expected, 5)


# --------------------------------------------------------------------------------------------
# mpbench run


@pytest.mark.slow
def test_run_trains_the_users_model_in_each_worker(cache: Path, tmp_path: Path) -> None:
    # In-process: the workers, which import the user's model themselves, are the point.
    completed = run_in_process(
        [
            *("run", "--profile", "quick", "--repeats", "1", "--model", SPEC),
            *("--image-size", "16", "--batch-size", "8", "--epochs", "1"),
            *("--synthetic-per-class", "6", "--precision", "float32", "mixed_float16"),
        ],
        tmp_path,
        cache,
    )
    out = completed.out
    assert completed.code == 0, completed.stderr[-2000:]
    assert f"model: {SPEC}, 16 px, batch 8" in completed.stdout
    document = json.loads((out / "results.json").read_text())
    assert document["settings"]["model"] == SPEC and document["settings"]["image_size"] == 16
    records = document["configurations"]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(
        r["result"]["parameters"] == load_float32(SPEC, 16).model.count_params() for r in records
    )
    assert records[1]["result"]["loss_scale"], "mixed_float16 trained with loss scaling"


@pytest.mark.slow
def test_run_trains_a_non_image_model_on_npz_arrays(cache: Path, tmp_path: Path) -> None:
    x, y = __import__("own_models").tabular_data()
    np.savez(tmp_path / "table.npz", x=x, y=y)
    completed = run_in_process(
        [
            *("run", "--profile", "quick", "--repeats", "1", "--model", "own_models:tabular"),
            *("--data", str(tmp_path / "table.npz"), "--batch-size", "8", "--epochs", "1"),
            *("--precision", "float32"),
        ],
        tmp_path,
        cache,
    )
    assert completed.code == 0, completed.stderr[-2000:]
    out = completed.out
    document = json.loads((out / "results.json").read_text())
    assert document["data"]["root"] == str((tmp_path / "table.npz").resolve())
    assert document["data"]["train_images"] + document["data"]["validation_images"] == len(x)
    assert document["configurations"][0]["status"] == "ok"


# --------------------------------------------------------------------------------------------
# mpbench profile


def made_up_profile() -> LayerProfile:
    """Timings chosen so that the order by added time differs from the order by ratio and by
    layer, and one layer is faster in half precision."""
    ms = {
        "a": {"float32+xla_off": 1.0, "mixed_float16+xla_off": 5.0},  # +4, 5x
        "b": {"float32+xla_off": 10.0, "mixed_float16+xla_off": 16.0},  # +6, 1.6x
        "c": {"float32+xla_off": 3.0, "mixed_float16+xla_off": 2.0},  # faster
    }
    layers = [
        {"name": n, "class": "Dense", "input_shape": [], "forward_flops": 0, "ms": t}
        for n, t in ms.items()
    ]
    return LayerProfile(
        "m",
        "spec",
        4,
        1,
        1,
        ["float32", "mixed_float16"],
        ["off"],
        layers,
        {"float32+xla_off": 20.0, "mixed_float16+xla_off": 40.0},
        "/CPU:0",
    )


def test_slower_layers_are_sorted_by_added_time_from_their_own_timings() -> None:
    slower = made_up_profile().slower()
    assert [e["layer"] for e in slower] == ["b", "a"]
    assert [e["added_ms"] for e in slower] == [6.0, 4.0]
    assert [e["share_of_step"] for e in slower] == [16.0 / 40.0, 5.0 / 40.0]
    assert made_up_profile().layer_sum_ms("mixed_float16+xla_off") == 23.0


@pytest.mark.slow
def test_profile_on_this_cpu_lists_layers_slower_in_float16(invoke, tmp_path: Path) -> None:
    # A CPU fact (float16 is emulated there), so the CPU is pinned.
    with tf.device("/CPU:0"):
        profile = profile_layers(
            load_float32(SPEC, 48), 4, ["float32", "mixed_float16"], ["off"], steps=2, rounds=2
        )
    document = profile.to_dict()
    slower = document["slower"]
    assert slower, "no layer slower under mixed_float16 than float32 on this CPU"
    added = [entry["added_ms"] for entry in slower]
    assert added == sorted(added, reverse=True)
    by_name = {layer["name"]: layer for layer in document["layers"]}
    assert {"depthwise", "upsample", "probs"} <= set(by_name)
    for entry in slower:
        own = by_name[entry["layer"]]["ms"]
        assert entry["float32_ms"] == own["float32+xla_off"]
        assert entry["half_ms"] == own["mixed_float16+xla_off"]
        assert entry["added_ms"] == entry["half_ms"] - entry["float32_ms"] > 0
        assert (
            entry["share_of_step"]
            == entry["half_ms"] / document["step_ms"]["mixed_float16+xla_off"]
        )
    for name, total in document["layer_sum_ms"].items():
        assert total == pytest.approx(sum(layer["ms"][name] for layer in document["layers"]))


@pytest.mark.slow
def test_profile_command_names_the_model(invoke, tmp_path: Path) -> None:
    out = tmp_path / "p"
    code, stdout, stderr = invoke(
        [
            "profile",
            SPEC,
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--precision",
            "mixed_bfloat16",
            "--xla",
            "off",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["model"] == "mobile_up" and document["source"] == SPEC
    assert set(document["step_ms"]) == {"float32+xla_off", "mixed_bfloat16+xla_off"}
    assert json.loads((out / "profile.json").read_text())["source"] == SPEC
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert keras.mixed_precision.dtype_policy().name == "float32"
