"""Root pytest configuration: quiet TensorFlow, GPU detection once, global-state hygiene, and
the ``tensorflow_only`` skips on the JAX and torch Keras backends."""

from __future__ import annotations

import os

# Must be set before TensorFlow is imported anywhere: keep C++/absl log noise out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pytest

from mpcore.modes import GlobalState
from mpcore.probe import backend
from mpcore.probe.machine import visible_gpus

NO_GPU_REASON = "no GPU visible to TensorFlow"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when TensorFlow sees no GPU, and tests marked
    ``tensorflow_only`` when the Keras backend is not TensorFlow (decided once, before any
    runs, from what this process can do)."""
    if not backend.is_tensorflow():
        only = pytest.mark.skip(
            reason=f"{backend.TENSORFLOW_ONLY} (the Keras backend is {backend.name()})"
        )
        for item in items:
            if "tensorflow_only" in item.keywords:
                item.add_marker(only)
    if visible_gpus():
        return
    skip = pytest.mark.skip(reason=NO_GPU_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def restore_tf_globals():
    """Restore the dtype policy, grappler options and JIT setting after every test."""
    saved = GlobalState.capture()
    yield
    saved.restore()


@pytest.fixture(scope="session")
def ship_root(tmp_path_factory: pytest.TempPathFactory):
    """A small generated ship data set on disk (seed layout), shared by the session."""
    from mpcore.synthetic import write_synthetic_ships

    return write_synthetic_ships(tmp_path_factory.mktemp("ships"), per_class=24, image_size=64)
