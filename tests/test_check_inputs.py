"""Bad input to ``mpbench check`` and ``mpbench profile`` is one line on stderr and exit status 2:
options, data whose values cannot be judged, factories that exit, print or raise, an unavailable
Keras backend; and the start-up of a command is quiet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _one_line_error(code: int, out: str, err: str, command: str, *needles: str) -> str:
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mpbench {command}: error: "), lines
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["check", "profile"])
@pytest.mark.parametrize(
    ("options", "needles"),
    [
        (["--batch-size", "100000000"], ["--batch-size 100000000", "GiB", "largest batch"]),
        (["--batch-size", "0"], ["--batch-size"]),
    ],
)
def test_batch_size_refused_before_allocating(invoke, tmp_path, command, options, needles):
    code, out, err = invoke([command, "input_models:tiny", *options, "--out", str(tmp_path / "o")])
    _one_line_error(code, out, err, command, *needles)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_negative_seed_refused(invoke, tmp_path):
    code, out, err = invoke(["check", "input_models:tiny", "--seed", "-1"])
    _one_line_error(code, out, err, "check", "--seed", "-1")


def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x=x, y=y)
    return str(path)


def test_all_nan_data_refused(invoke, tmp_path):
    data = _npz(tmp_path / "nan.npz", np.full((4, 8, 8, 3), np.nan, np.float32), np.zeros(4))
    code, out, err = invoke(["check", "input_models:tiny", "--data", data, "--out", str(tmp_path)])
    _one_line_error(code, out, err, "check", "nan.npz", "768 NaN/inf values of 768")


def test_labels_beyond_the_models_classes_refused(invoke, tmp_path):
    x = np.zeros((4, 8, 8, 3), np.float32)
    data = _npz(tmp_path / "labels.npz", x, np.array([0, 1, 2, 7]))
    code, out, err = invoke(["check", "input_models:tiny", "--data", data, "--out", str(tmp_path)])
    _one_line_error(code, out, err, "check", "labels span 0..7", "'head' has 3 classes")


def test_labels_that_fit_are_accepted(invoke, tmp_path):
    x = np.random.default_rng(0).standard_normal((8, 8, 8, 3)).astype(np.float32)
    data = _npz(tmp_path / "ok.npz", x, np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    code, out, err = invoke(["check", "input_models:tiny", "--data", data, "--out", str(tmp_path)])
    assert code in (0, 1), err
    assert "verdict" in out


def test_undecodable_image_in_the_batch_refused(invoke, tmp_path):
    from mpcore.data.synthetic import write_synthetic_ships

    root = write_synthetic_ships(tmp_path / "ships", per_class=2, image_size=8, seed=0)
    victim = sorted((root / "train" / "images").iterdir())[0]
    victim.write_bytes(b"not an image at all")
    code, out, err = invoke(
        ["check", "input_models:tiny", "--data", str(root), "--out", str(tmp_path / "o")]
    )
    _one_line_error(code, out, err, "check", victim.name, "unreadable image")


@pytest.mark.parametrize("command", ["check", "profile"])
def test_factory_that_exits_is_one_line_naming_it(invoke, tmp_path, command):
    code, out, err = invoke([command, "input_models:exits", "--out", str(tmp_path)])
    _one_line_error(code, out, err, command, "input_models:exits", "sys.exit(3)")


def test_factory_that_raises_is_one_line_naming_it(invoke, tmp_path):
    code, out, err = invoke(["check", "input_models:raises", "--out", str(tmp_path)])
    _one_line_error(code, out, err, "check", "input_models:raises", "RuntimeError")


def test_factory_that_prints_keeps_check_json_stdout_json(invoke, tmp_path):
    code, out, err = invoke(["check", "input_models:chatty", "--json", "--out", str(tmp_path)])
    assert code in (0, 1), err
    document = json.loads(out)  # nothing but the report on stdout
    assert document["source"] == "input_models:chatty"
    assert "building the tiny model" in err
    assert "Total params" in err  # the factory's model.summary(), reported on stderr


@pytest.mark.parametrize("backend", ["bogus", "jax_not_installed"])
@pytest.mark.parametrize(
    "argv",
    [["doctor"], ["check", "input_models:tiny"], ["numerics"], ["profile", "small"], ["run"]],
)
def test_unavailable_keras_backend_refused_by_every_command(invoke, monkeypatch, backend, argv):
    import importlib.util

    if backend == "jax_not_installed":
        if importlib.util.find_spec("jax") is not None:
            pytest.skip("jax is installed here")
        backend = "jax"
    monkeypatch.setenv("KERAS_BACKEND", backend)
    code, out, err = invoke(argv)
    _one_line_error(code, out, err, argv[0], f"KERAS_BACKEND={backend!r}")


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    root = str(Path(__file__).resolve().parents[1])
    return {**env, "PYTHONPATH": root, **extra}


@pytest.mark.slow
def test_working_folder_is_on_the_path_and_start_up_is_quiet(tmp_path):
    """As ``python -m`` would have it: ``cd`` into the factory's folder and name ``mod:fn``. The
    child is not told to quieten TensorFlow: its stderr holds the one error line and nothing
    of TensorFlow's start-up."""
    source = Path(__file__).with_name("input_models.py").read_text()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "my_factories.py").write_text(source)
    # What the console script is: a file elsewhere (its own folder, not the working one, starts
    # sys.path) that calls console(). `python -c` would put the working folder there itself.
    (tmp_path / "bin").mkdir()
    launcher = tmp_path / "bin" / "mpbench_script.py"
    launcher.write_text("import sys\nfrom mpcore.face.cli import console\nsys.exit(console())\n")
    result = subprocess.run(
        [sys.executable, str(launcher), "check", "my_factories:raises", "--out", "o"],
        cwd=tmp_path / "work",
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    # The factory was imported from the working folder (it raised), and the error is all there is.
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "mpbench check: error: my_factories:raises: the factory raised "
        "RuntimeError: no weights here"
    ]


@pytest.mark.parametrize(
    ("y", "loss", "needles"),
    [
        (np.eye(5)[np.arange(4) % 5], [], ["labels of shape (5,)", "one-hot labels want"]),
        (np.arange(4) % 3, ["--loss", "categorical_crossentropy"], ["class indices want"]),
        (np.eye(5)[np.arange(4)], ["--loss", "categorical_crossentropy"], ["shape (3,)"]),
    ],
)
def test_labels_shaped_for_another_loss_refused(invoke, tmp_path, y, loss, needles):
    data = _npz(tmp_path / "shaped.npz", np.zeros((4, 8, 8, 3), np.float32), y)
    code, out, err = invoke(
        ["check", "input_models:tiny", "--data", data, *loss, "--out", str(tmp_path)]
    )
    _one_line_error(code, out, err, "check", "shaped.npz", *needles)
