"""Keras backends: the TensorFlow-free import path, TensorFlow-only modes refused with the reason,
and the report's backend column.

The import tests run in a fresh interpreter where ``import tensorflow`` fails (a ``None`` entry in
``sys.modules``), on the backend of the environment (tox's ``py311-jax``/``py311-torch``, where
TensorFlow is not installed at all) or, where that is TensorFlow, on another Keras backend this
environment has (jax, torch, or numpy with scipy), and are skipped where it has none.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpcore.bench.table import training_table, with_speedups
from mpcore.probe import backend

ROOT = Path(__file__).resolve().parents[1]
#: Every module the JAX/torch path loads (the harness, models, modes, numerics, telemetry, device
#: table, report tables, the plugin) and the root conftest.
TENSORFLOW_FREE = (
    "mpcore.precision.modes",
    "mpcore.models.registry",
    "mpcore.precision.census",
    "mpcore.data.synthetic",
    "mpcore.train.settings",
    "mpcore.train.fit",
    "mpcore.models.flops",
    "mpcore.probe.skips",
    "mpcore.probe.machine",
    "mpcore.probe.telemetry",
    "mpcore.probe.peaks",
    "mpcore.bench.stepbench",
    "mpcore.bench.backendstep",
    "mpcore.bench.table",
    "mpcore.bench.plugin",
    "mpcore.report",
)


def _other_backend() -> str | None:
    """A Keras backend other than TensorFlow that this environment can run, or None."""
    if not backend.is_tensorflow():
        return backend.name()
    # Keras's numpy backend needs scipy; jax and torch are their own.
    needs = {"jax": "jax", "torch": "torch", "numpy": "scipy"}
    return next((name for name, module in needs.items() if importlib.util.find_spec(module)), None)


OTHER_BACKEND = _other_backend()
needs_other_backend = pytest.mark.skipif(
    OTHER_BACKEND is None,
    reason="no Keras backend but TensorFlow is installed here (tox -e py311-jax runs this)",
)


def without_tensorflow(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python where TensorFlow cannot be imported."""
    keras_backend = OTHER_BACKEND
    prelude = "import sys; sys.modules['tensorflow'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        env={**os.environ, "KERAS_BACKEND": keras_backend},
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_other_backend
def test_the_step_harness_and_the_core_import_without_tensorflow() -> None:
    code = "\n".join(
        [
            "import importlib, importlib.util",
            *[f"import {module}" for module in TENSORFLOW_FREE],
            f"spec = importlib.util.spec_from_file_location('root_conftest', {str(ROOT)!r} + "
            "'/conftest.py')",
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))",
            "from mpcore.probe.machine import machine_summary",
            "summary = machine_summary()",
            "assert summary['versions']['backend'] != 'tensorflow', summary",
            "print('ok', summary['versions']['backend'])",
        ]
    )
    result = without_tensorflow(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok ")


@needs_other_backend
def test_a_tensorflow_only_feature_says_it_needs_tensorflow() -> None:
    code = (
        "from mpcore.probe.backend import TensorFlowRequiredError, tf\n"
        "try:\n"
        "    tf.constant(1.0)\n"
        "except TensorFlowRequiredError as error:\n"
        "    print(error)\n"
    )
    result = without_tensorflow(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "this feature needs TensorFlow, which is not installed" in result.stdout


@needs_other_backend
def test_tensorflow_only_modes_are_refused_with_the_reason_elsewhere() -> None:
    code = (
        "from mpcore.precision.modes import RunConfig, UnsupportedModeError, applied\n"
        "for precision, xla in [('amp_rewrite', 'off'), ('float32', 'auto')]:\n"
        "    try:\n"
        "        with applied(RunConfig(precision, xla)):\n"
        "            pass\n"
        "    except UnsupportedModeError as error:\n"
        "        print(error)\n"
        "with applied(RunConfig('mixed_bfloat16', 'jit')):\n"
        "    import keras\n"
        "    print('policy', keras.mixed_precision.dtype_policy().name)\n"
    )
    result = without_tensorflow(code)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "amp_rewrite (grappler's rewrite) is TensorFlow-only" in lines[0]
    assert "XLA auto (auto-clustering) is TensorFlow-only" in lines[1]
    assert lines[2] == "policy mixed_bfloat16"


@pytest.mark.skipif(not backend.is_tensorflow(), reason="TensorFlow serves every mode")
def test_tensorflow_serves_every_mode() -> None:
    assert backend.unsupported_reason("amp_rewrite", "auto") is None


def _row(backend_name: str, precision: str, ms: float) -> dict:
    return {
        "group": "small 32px batch 8 on CPU",
        "precision": precision,
        "xla": "off" if precision == "float32" else "jit",
        "backend": backend_name,
        "ms_per_step": ms,
        "images_per_second": 8000.0 / ms,
    }


def test_speedups_are_over_the_baseline_of_the_same_backend() -> None:
    rows = [
        _row("tensorflow", "float32", 10.0),
        _row("tensorflow", "mixed_float16", 5.0),
        _row("jax", "float32", 40.0),
        _row("jax", "mixed_float16", 10.0),
    ]
    speedups = {(r["backend"], r["precision"]): r["speedup"] for r in with_speedups(rows)}
    assert speedups[("tensorflow", "mixed_float16")] == 2.0
    assert speedups[("jax", "mixed_float16")] == 4.0
    table = training_table(rows)
    assert table.splitlines()[0].split()[:4] == ["precision", "xla", "step", "backend"]
    assert any(line.split()[:3] == ["mixed_float16", "jit", "jax"] for line in table.splitlines())
