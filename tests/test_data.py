"""The ship data reader, stratified split, tf.data pipeline and synthetic generator."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from mpcore.data.ships import (
    CLASS_NAMES,
    DataError,
    csv_path,
    images_dir,
    make_dataset,
    read_ship_index,
    steps_per_epoch,
    stratified_split,
)
from mpcore.data.synthetic import MARKER, write_synthetic_ships
from mpcore.models.registry import model_spec

PER_CLASS = 24  # the root conftest's ship_root fixture


@pytest.fixture
def ship_copy(ship_root: Path, tmp_path: Path) -> Path:
    """A private copy of the generated set that a test may damage."""
    return Path(shutil.copytree(ship_root, tmp_path / "ships"))


def _write_csv(root: Path, text: str, encoding: str = "utf-8") -> None:
    csv_path(root).write_text(text, encoding=encoding)


def test_reader_counts_and_maps_categories_1_to_5_onto_0_to_4(ship_root: Path) -> None:
    index = read_ship_index(ship_root)
    assert len(index) == PER_CLASS * len(CLASS_NAMES)
    assert index.class_counts() == [PER_CLASS] * 5
    rows = csv_path(ship_root).read_text().splitlines()[1:]
    for row, path, label in zip(rows, index.paths, index.labels, strict=True):
        name, category = row.split(",")
        assert Path(path).name == name
        assert label == int(category) - 1
    # Tankers (category 5) must be a real class, not an all-zero one-hot target.
    assert 4 in index.labels and set(index.labels) == {0, 1, 2, 3, 4}


def test_split_is_stratified_disjoint_and_seeded(ship_root: Path) -> None:
    index = read_ship_index(ship_root)
    train, validation = stratified_split(index, 0.25, seed=7)
    assert validation.class_counts() == [6] * 5
    assert train.class_counts() == [18] * 5
    assert not set(train.paths) & set(validation.paths)
    assert len(train) + len(validation) == len(index)
    again = stratified_split(index, 0.25, seed=7)
    assert again == (train, validation)
    other = stratified_split(index, 0.25, seed=8)
    assert other[1].paths != validation.paths


def test_split_needs_two_images_per_class(ship_copy: Path) -> None:
    lines = csv_path(ship_copy).read_text().splitlines()
    keep = [lines[0]] + [line for line in lines[1:] if not line.endswith(",3")]
    keep.append(next(line for line in lines[1:] if line.endswith(",3")))
    _write_csv(ship_copy, "\n".join(keep) + "\n")
    with pytest.raises(DataError, match=r"class 3 \(Carrier\) has 1 image"):
        stratified_split(read_ship_index(ship_copy))


def test_pipeline_batches_have_model_shapes_and_dtypes(ship_root: Path) -> None:
    index = read_ship_index(ship_root)
    spec = model_spec("small")
    dataset = make_dataset(index, 32, 16, spec.preprocess, seed=1)
    images, labels = next(iter(dataset))
    assert images.shape == (16, 32, 32, 3) and images.dtype == "float32"
    assert labels.shape == (16,) and labels.dtype == "int32"
    assert float(np.min(images)) >= 0.0 and float(np.max(images)) <= 1.0
    total = sum(int(batch[1].shape[0]) for batch in dataset)
    assert total == len(index)


@pytest.mark.parametrize(
    ("shuffle", "cache"),
    [(True, False), (True, True), (False, False)],
    ids=["shuffled", "cached", "in-order"],
)
def test_pipeline_knows_its_length_so_fit_does_not_warn(
    ship_root: Path, shuffle: bool, cache: bool
) -> None:
    """Every pipeline counts its batches: with an unknown count Keras's first epoch ends by
    running out of data, with a UserWarning that every run printed."""
    index = read_ship_index(ship_root)
    dataset = make_dataset(
        index, 16, 16, model_spec("small").preprocess, shuffle=shuffle, cache=cache
    )
    assert int(dataset.cardinality()) == steps_per_epoch(len(index), 16)
    assert sum(1 for _ in dataset) == steps_per_epoch(len(index), 16)  # and it holds that many
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*ran out of data.*")
        model.fit(dataset, epochs=2, shuffle=False, verbose=0)


def test_pipeline_order_is_seeded(ship_root: Path) -> None:
    index = read_ship_index(ship_root)
    preprocess = model_spec("small").preprocess

    def first_labels(seed: int) -> list[int]:
        dataset = make_dataset(index, 16, 40, preprocess, seed=seed)
        return next(iter(dataset))[1].numpy().tolist()

    assert first_labels(3) == first_labels(3)
    assert first_labels(3) != first_labels(4)


def test_pipeline_decodes_png_content_and_grayscale(ship_copy: Path) -> None:
    from PIL import Image

    first = images_dir(ship_copy) / "000000.jpg"
    Image.open(first).convert("L").save(first, format="PNG")  # PNG bytes under a .jpg name
    index = read_ship_index(ship_copy)
    dataset = make_dataset(index, 24, 4, model_spec("small").preprocess, shuffle=False)
    images, _ = next(iter(dataset))
    assert images.shape == (4, 24, 24, 3)


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("name,label\n000000.jpg,1\n", r"train\.csv: missing column\(s\) image, category"),
        ("image\n000000.jpg\n", r"train\.csv: missing column\(s\) category"),
        ("image,category\n000000.jpg,6\n", r"train\.csv:2: category 6 is outside 1\.\.5"),
        ("image,category\n000000.jpg,1\n000001.jpg,0\n", r"train\.csv:3: category 0 is outside"),
        ("image,category\n000000.jpg,ship\n", r"train\.csv:2: category 'ship' is not an integer"),
        ("image,category\nabsent.jpg,1\n", r"train\.csv:2: image 'absent\.jpg' not found"),
        ("image,category\n000000.jpg,1\n000000.jpg,1\n", r"train\.csv:3: duplicate image"),
        ("", r"train\.csv: file is empty"),
        ("image,category\n", r"train\.csv: no images listed"),
    ],
)
def test_bad_csv_names_the_file_and_row(ship_copy: Path, csv_text: str, message: str) -> None:
    _write_csv(ship_copy, csv_text)
    with pytest.raises(DataError, match=message):
        read_ship_index(ship_copy)


def test_bom_and_whitespace_are_accepted(ship_copy: Path) -> None:
    _write_csv(ship_copy, " Image , Category \n 000000.jpg , 5 \n000001.jpg,2\n", "utf-8-sig")
    index = read_ship_index(ship_copy)
    assert index.labels == (4, 1)


def test_missing_folder_and_csv_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        read_ship_index(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"train\.csv: file not found"):
        read_ship_index(tmp_path)


def test_synthetic_set_is_reused_and_seeded(tmp_path: Path) -> None:
    root = write_synthetic_ships(tmp_path / "a", per_class=2, image_size=32, seed=5)
    stamp = (images_dir(root) / "000000.jpg").stat().st_mtime_ns
    assert write_synthetic_ships(root, per_class=2, image_size=32, seed=5) == root
    assert (images_dir(root) / "000000.jpg").stat().st_mtime_ns == stamp
    assert (root / MARKER).is_file()
    twin = write_synthetic_ships(tmp_path / "b", per_class=2, image_size=32, seed=5)
    for name in ("000000.jpg", "000009.jpg"):
        assert (images_dir(root) / name).read_bytes() == (images_dir(twin) / name).read_bytes()


def test_bad_images_are_all_found_and_named(ship_copy: Path) -> None:
    from PIL import Image

    from mpcore.data.ships import describe_bad_images, find_bad_images, without_images

    folder = images_dir(ship_copy)
    truncated = (folder / "000001.jpg").read_bytes()
    (folder / "000001.jpg").write_bytes(truncated[: len(truncated) // 2])
    (folder / "000002.jpg").write_text("not a picture")
    (folder / "000003.jpg").write_bytes(b"")
    Image.open(folder / "000004.jpg").convert("RGBA").save(folder / "000004.jpg", format="PNG")
    Image.open(folder / "000005.jpg").convert("L").save(folder / "000005.jpg", format="JPEG")
    index = read_ship_index(ship_copy)
    bad = find_bad_images(index)
    assert [Path(b.path).name for b in bad] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert "truncated" in bad[0].reason
    assert bad[1].reason == bad[2].reason == "not an image"
    line = describe_bad_images(bad)
    assert line.startswith("3 unreadable images: 000001.jpg (") and "\n" not in line
    kept = without_images(index, bad)
    assert len(kept) == len(index) - 3
    # What is kept, RGBA-as-PNG and grayscale included, decodes through the pipeline.
    dataset = make_dataset(kept, 16, len(kept), model_spec("small").preprocess, shuffle=False)
    assert next(iter(dataset))[0].shape == (len(kept), 16, 16, 3)


def test_csv_the_csv_module_rejects_is_one_named_error(ship_copy: Path) -> None:
    # Python's csv refuses fields over 128 KiB (and, before 3.11, NUL bytes) with csv.Error.
    _write_csv(ship_copy, "image,category\n" + "a" * 200_000 + ",1\n")
    with pytest.raises(DataError, match=r"train\.csv:2: not valid CSV \(field larger than"):
        read_ship_index(ship_copy)
    _write_csv(ship_copy, "image,category\n000000.jpg,1\x00\n")
    with pytest.raises(
        DataError, match=r"train\.csv:2: (not valid CSV|category .* not an integer)"
    ):
        read_ship_index(ship_copy)
