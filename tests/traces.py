"""How many times Keras traced a model's train and test steps, for the tests that hold
``model.fit`` (and the benchmarks' fit step) to one trace of each."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

import keras
import pytest

STEPS = ("train_step", "test_step")


@contextlib.contextmanager
def counted_steps() -> Iterator[collections.Counter]:
    """Count the calls of every model's ``train_step`` and ``test_step`` in the block. On
    TensorFlow, outside ``run_eagerly``, a step's Python body runs only while ``fit`` traces it
    into a graph, so the counts are its traces."""
    counts: collections.Counter = collections.Counter()
    with pytest.MonkeyPatch.context() as patch:
        for name in STEPS:
            original = getattr(keras.Model, name)

            def counting(self, *args, _original=original, _name=name, **kwargs):
                counts[_name] += 1
                return _original(self, *args, **kwargs)

            patch.setattr(keras.Model, name, counting)
        yield counts
