"""Claim 9: mixed precision costs "zero to very little" accuracy: the small model trained on the
generated ship set with the same seed and epochs reaches the same validation accuracy, within 3
points, under float32, mixed_float16 and mixed_bfloat16."""

from __future__ import annotations

import math

import keras
import pytest

from mpcore.data.ships import read_ship_index, stratified_split
from mpcore.data.synthetic import write_synthetic_ships
from mpcore.precision.modes import RunConfig
from mpcore.train.fit import RunResult, train
from mpcore.train.settings import TrainSettings

#: 48 images per class at 32 px, a quarter held out (60 validation images, 1.7 points each).
PER_CLASS = 48
SETTINGS = TrainSettings(
    model="small", image_size=32, batch_size=16, epochs=7, learning_rate=3e-3, seed=0
)
PARITY_POINTS = 3.0
MIXED = ("mixed_float16", "mixed_bfloat16")
#: ``train`` reads the images through the tf.data pipeline, which needs TensorFlow.
pytestmark = pytest.mark.tensorflow_only


def settling_schedule(epoch: int, learning_rate: float) -> float:
    """Halve the learning rate each epoch after the third, so the final accuracy is a settled
    value rather than one point of a noisy curve (with it all three modes end at 100%)."""
    return SETTINGS.learning_rate * 0.5 ** max(0, epoch - 3)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    root = write_synthetic_ships(
        tmp_path_factory.mktemp("parity-ships"), per_class=PER_CLASS, image_size=32, seed=0
    )
    train_index, validation_index = stratified_split(read_ship_index(root), 0.25, seed=0)
    return {
        precision: train(
            RunConfig(precision),
            SETTINGS,
            train_index,
            validation_index,
            callbacks=[keras.callbacks.LearningRateScheduler(settling_schedule)],
        )
        for precision in ("float32", *MIXED)
    }


@pytest.mark.slow
def test_float32_learns_the_set(results: dict[str, RunResult]) -> None:
    """The reference is meaningful: float32 ends above 90% (chance is 20%)."""
    assert results["float32"].validation_images == 5 * round(PER_CLASS * 0.25)
    assert results["float32"].val_accuracy[-1] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_mixed_precision_matches_float32_accuracy_within_3_points(
    results: dict[str, RunResult], precision: str
) -> None:
    """Same data, seed and epochs: the final validation accuracy of ``precision`` is within 3
    points of float32's, and its training loss is finite throughout."""
    mixed, reference = results[precision], results["float32"]
    assert all(math.isfinite(loss) for loss in mixed.loss)
    gap = 100 * abs(mixed.val_accuracy[-1] - reference.val_accuracy[-1])
    assert gap <= PARITY_POINTS, (
        f"{precision} {mixed.val_accuracy[-1]:.3f} vs float32 {reference.val_accuracy[-1]:.3f}"
    )
