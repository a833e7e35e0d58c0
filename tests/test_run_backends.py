"""`mpbench run` on the JAX Keras backend: the input path, the modes, DataParallel.

The refusals run anywhere (they read KERAS_BACKEND before any framework is imported). The runs
need JAX and a process of their own (the Keras backend and XLA's host-device count are fixed
when a process starts them), so they skip where JAX is not installed: `tox -e py311-jax` runs
them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpcore.face.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--precision", "float32,amp_rewrite"], "--precision amp_rewrite: amp_rewrite"),
        (["--xla", "off,auto"], "--xla auto: XLA auto (auto-clustering)"),
    ],
)
def test_a_tensorflow_only_mode_is_refused_in_one_line_on_jax(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path, options, named
) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert main(["run", *options, "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0] and "TensorFlow-only; the backend is jax" in lines[0]
    assert not (tmp_path / "out").exists()


def _jax_run(tmp_path: Path, *options: str, env: dict[str, str] | None = None) -> dict:
    """``KERAS_BACKEND=jax mpbench run`` in a process of its own; its results.json."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed (tox -e py311-jax runs this)")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mpcore", "run", "--out", str(out), *options],
        env={
            **os.environ,
            "KERAS_BACKEND": "jax",
            "MPBENCH_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


#: 50 generated images: 40 for training, 10 for validation (2 of each class).
QUICK = ["--profile", "quick", "--synthetic-per-class", "10", "--image-size", "32", "--epochs", "2"]


@pytest.mark.slow
def test_jax_trains_float32_and_bfloat16_through_the_array_pipeline(tmp_path: Path) -> None:
    document = _jax_run(
        tmp_path, *QUICK, "--precision", "float32,mixed_bfloat16", "--xla", "jit", "--repeats", "1"
    )
    records = {record["name"]: record for record in document["configurations"]}
    assert set(records) == {"float32+xla_jit", "mixed_bfloat16+xla_jit"}
    for record in records.values():
        assert record["status"] == "ok", record["reason"]
        assert record["result"]["machine"]["versions"]["backend"] == "jax"
        result = record["result"]
        assert len(result["epoch_seconds"]) == 2 and min(result["epoch_seconds"]) > 0
        assert result["train_images"] == 40 and result["steps_per_epoch"] == 3
    assert (tmp_path / "run" / "curves.png").is_file()


@pytest.mark.slow
def test_mirrored_on_jax_trains_on_two_host_devices(tmp_path: Path) -> None:
    document = _jax_run(
        tmp_path,
        *QUICK,
        "--precision",
        "float32",
        "--xla",
        "jit",
        "--repeats",
        "1",
        "--strategy",
        "mirrored",
        "--cpu-replicas",
        "2",
    )
    records = {record["name"]: record for record in document["configurations"]}
    assert document["distribution"]["replicas"] == 2
    single, mirrored = records["float32+xla_jit"], records["float32+xla_jit@mirrored"]
    assert single["status"] == mirrored["status"] == "ok", mirrored["reason"]
    assert single["result"]["replicas"] == 1 and single["result"]["global_batch"] == 16
    assert mirrored["result"]["replicas"] == 2 and mirrored["result"]["global_batch"] == 32
    # 40 images: one global batch of 32 and a last one of 8, split 4 + 4 over the devices.
    assert mirrored["result"]["steps_per_epoch"] == 2
    assert mirrored["result"]["train_images"] == 40
