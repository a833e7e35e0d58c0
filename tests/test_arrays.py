"""The backend-neutral input path (mpcore.data.arrays) against the tf.data one.

Both read the same tiny ship layout: the same files must come out in the same order with the
same pixels (within 1/255 of the 0..255 range: the cache rounds the resized image to uint8), so
a float32 run on either path trains on the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mpcore.data.arrays import (
    EpochOrder,
    ImageBatches,
    cached_images,
    decode_resized,
    resize_bilinear,
)
from mpcore.data.ships import make_dataset, read_ship_index, stratified_split
from mpcore.data.synthetic import write_synthetic_ships
from mpcore.models.registry import model_spec

SIZE = 40
BATCH = 6


@pytest.fixture(scope="module")
def ships(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ship layout: 5 classes x 6 JPEGs of 75 px (not a multiple of SIZE: a real
    resize), with one PNG-in-.jpg among them as real data sets have."""
    root = write_synthetic_ships(tmp_path_factory.mktemp("ships"), 6, 75, seed=1)
    from PIL import Image

    first = read_ship_index(root).paths[0]
    with Image.open(first) as image:
        image.convert("RGB").save(first, format="PNG")
    return root


def tf_batches(index, preprocess, order: EpochOrder, count: int, cache: bool) -> list:
    dataset = make_dataset(index, SIZE, BATCH, preprocess, order=order, cache=cache)
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def array_batches(index, preprocess, order: EpochOrder, count: int, folder: Path) -> list:
    images = cached_images(index.paths, SIZE, folder=folder)
    labels = np.asarray(index.labels, dtype=np.int32)
    batches = ImageBatches(images, labels, BATCH, preprocess, order)
    return [batches[i] for i in range(count)]


@pytest.mark.tensorflow_only  # the tf.data side
@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("model", ["small", "resnet50"])
def test_both_pipelines_yield_the_same_first_batches(
    ships: Path, tmp_path: Path, model: str, cache: bool
) -> None:
    train, _ = stratified_split(read_ship_index(ships), 0.2, seed=3)
    preprocess = model_spec(model).preprocess
    # One pixel level of the 0..255 range, in the preprocessing's units.
    level = 1.0 if model == "resnet50" else 1.0 / 255.0
    for epoch in (0, 1):
        tf_order, array_order = EpochOrder(len(train), 3), EpochOrder(len(train), 3)
        tf_order.epoch = array_order.epoch = epoch
        tf_order.driven = array_order.driven = True
        expected = tf_batches(train, preprocess, tf_order, 3, cache)
        got = array_batches(train, preprocess, array_order, 3, tmp_path)
        order = EpochOrder(len(train), 3).order(epoch)
        for step, ((tf_x, tf_y), (x, y)) in enumerate(zip(expected, got, strict=True)):
            files = order[step * BATCH : (step + 1) * BATCH]
            np.testing.assert_array_equal(y, np.asarray(train.labels)[files])
            np.testing.assert_array_equal(tf_y, y)
            assert x.dtype == np.float32 and x.shape == tf_x.shape == (BATCH, SIZE, SIZE, 3)
            assert np.abs(tf_x - x).max() <= level * 1.0001, (epoch, step)


def test_epochs_are_different_permutations_of_the_same_images() -> None:
    order = EpochOrder(50, seed=7)
    first, second = order.order(0), order.order(1)
    assert sorted(first) == sorted(second) == list(range(50))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(EpochOrder(50, seed=7).order(1), second)
    assert list(EpochOrder(5, shuffle=False).order(3)) == [0, 1, 2, 3, 4]


def test_an_undriven_order_takes_the_next_epoch_at_each_pass() -> None:
    order = EpochOrder(20, seed=1)
    np.testing.assert_array_equal(order.next_pass(), order.order(0))
    np.testing.assert_array_equal(order.next_pass(), order.order(1))
    order.callback()  # fit drives it from now on: the epoch, not the pass count
    order.epoch = 0
    np.testing.assert_array_equal(order.next_pass(), order.order(0))


@pytest.mark.tensorflow_only
def test_the_numpy_resize_is_tensorflows(ships: Path) -> None:
    from mpcore.probe.backend import tf

    rng = np.random.default_rng(0)
    for shape, size in [((75, 75, 3), 40), ((31, 57, 3), 64), ((40, 40, 3), 40)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = tf.image.resize(image, (size, size)).numpy()
        np.testing.assert_allclose(resize_bilinear(image, size), expected, atol=1e-3)


def test_the_decoded_cache_is_written_once_and_memory_mapped(ships: Path, tmp_path: Path) -> None:
    index = read_ship_index(ships)
    first = cached_images(index.paths, SIZE, folder=tmp_path)
    assert isinstance(first, np.memmap) and first.dtype == np.uint8
    assert first.shape == (len(index), SIZE, SIZE, 3)
    (written,) = tmp_path.glob("*.npy")
    stamp = written.stat().st_mtime_ns
    again = cached_images(index.paths, SIZE, folder=tmp_path)
    assert written.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again[4], decode_resized(index.paths[4], SIZE))


def test_the_last_short_batch_is_kept_or_dropped() -> None:
    images = np.zeros((14, 2, 2, 3), np.uint8)
    labels = np.arange(14, dtype=np.int32)
    kept = ImageBatches(images, labels, 4, None, EpochOrder(14, shuffle=False))
    dropped = ImageBatches(images, labels, 4, None, EpochOrder(14), drop_remainder=True)
    assert len(kept) == 4 and len(kept[3][1]) == 2
    assert len(dropped) == 3
    with pytest.raises(IndexError):
        dropped[3]
