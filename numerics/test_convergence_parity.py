"""Claim 9: mixed precision costs "zero to very little" accuracy: the small model trained on the
generated ship set with the same seed and epochs learns as float32 does under mixed_float16 and
mixed_bfloat16: the same final validation accuracy within 3 points, and a training loss within
20% of float32's at every epoch, a band narrower than one epoch of learning (a control shows it:
float32 against itself one epoch behind falls outside it)."""

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
    model="small", image_size=32, batch_size=16, epochs=5, learning_rate=3e-3, seed=0
)
PARITY_POINTS = 3.0
#: Measured largest per-epoch gap of the training loss to float32's (TensorFlow 2.21, Keras 3.15,
#: oneDNN on or off): 18.5% for mixed_float16 (epoch 5, 0.093 against 0.114: near the band) and
#: 8.5% for mixed_bfloat16; one epoch of float32's own learning changes it by 40-55%.
LOSS_BAND = 0.20
MIXED = ("mixed_float16", "mixed_bfloat16")
#: ``train`` reads the images through the tf.data pipeline, which needs TensorFlow.
pytestmark = pytest.mark.tensorflow_only


def settling_schedule(epoch: int, learning_rate: float) -> float:
    """Halve the learning rate each epoch after the third, so the final accuracy is a settled
    value rather than one point of a noisy curve (all three modes end at 100%, which is why the
    loss curves are compared too)."""
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


def largest_relative_gap(curve: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / b for a, b in zip(curve, reference, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_mixed_precision_training_loss_follows_float32_epoch_by_epoch(
    results: dict[str, RunResult], precision: str
) -> None:
    """The whole training-loss curve, not only where it ends: within 20% of float32's at every
    epoch (the validation accuracy of the early epochs swings between runs of any precision on
    60 images, so it is compared only once settled)."""
    reference = results["float32"].loss
    assert reference[-1] < reference[0] / 10, reference  # float32 really learns
    gap = largest_relative_gap(results[precision].loss, reference)
    assert gap <= LOSS_BAND, (precision, results[precision].loss, reference)


@pytest.mark.slow
def test_the_loss_band_is_narrower_than_one_epoch_of_learning(
    results: dict[str, RunResult],
) -> None:
    """The control: float32 one epoch behind itself is outside the band, so a mode that learned
    an epoch slower (or not at all) fails the comparison above."""
    loss = results["float32"].loss
    assert largest_relative_gap(loss[:-1], loss[1:]) > LOSS_BAND
