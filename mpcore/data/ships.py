"""The ship-classification data: reader, stratified split, tf.data pipeline, fingerprint.

Layout (the Analytics Vidhya "Game of Deep Learning" ships set used by the seed article)::

    ROOT/train/train.csv        columns image,category; categories 1..5
    ROOT/train/images/<image>   JPEG (PNG content is accepted too)

or, as the seed article's own repository keeps it (``Data/``)::

    ROOT/train.csv
    ROOT/train/<image>

Categories 1..5 (Cargo, Military, Carrier, Cruise, Tankers) become labels 0..4. The seed's own
code one-hot encoded 1..5 into five slots, which silently made every Tanker an all-zero target.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mpcore.data.arrays import EpochOrder
from mpcore.probe import backend
from mpcore.probe.backend import tf

CLASS_NAMES: tuple[str, ...] = ("Cargo", "Military", "Carrier", "Cruise", "Tankers")
NUM_CLASSES = len(CLASS_NAMES)
CSV_COLUMNS: tuple[str, ...] = ("image", "category")


class DataError(ValueError):
    """The data set on disk is not usable; the message names the file (and row)."""


@dataclasses.dataclass(frozen=True)
class ShipIndex:
    """Image paths and 0-based labels read from a ship data set."""

    root: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=NUM_CLASSES).tolist()

    def subset(self, positions: Sequence[int]) -> ShipIndex:
        return ShipIndex(
            self.root,
            tuple(self.paths[i] for i in positions),
            tuple(self.labels[i] for i in positions),
        )


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a ship data set keeps its table and its images, relative to its root."""

    csv: str
    images: str

    def describe(self) -> str:
        return f"{self.csv} + {self.images}/"


#: The layouts read, in the order they are looked for: the data set's own (the article's), then
#: the article's repository's, which keeps the table beside the image folder.
LAYOUTS = (Layout("train/train.csv", "train/images"), Layout("train.csv", "train"))


def layout_of(root: str | Path) -> Layout:
    """The layout whose ``train.csv`` is in ``root`` (the first of :data:`LAYOUTS` when neither
    is, the one a new data set is written in)."""
    return next((layout for layout in LAYOUTS if (Path(root) / layout.csv).is_file()), LAYOUTS[0])


def csv_path(root: str | Path) -> Path:
    return Path(root) / layout_of(root).csv


def images_dir(root: str | Path) -> Path:
    return Path(root) / layout_of(root).images


def _parse_category(raw: str, where: str) -> int:
    try:
        category = int(raw)
    except ValueError:
        raise DataError(f"{where}: category {raw!r} is not an integer") from None
    if not 1 <= category <= NUM_CLASSES:
        raise DataError(f"{where}: category {category} is outside 1..{NUM_CLASSES}")
    return category - 1


def _image_path(folder: Path, name: str, where: str) -> Path:
    """``folder / name`` normalised; a name that is absolute or leads (by ``..`` or a link)
    outside ``folder`` is a :class:`DataError` naming the line."""
    if os.path.isabs(name) or name.startswith("~"):
        raise DataError(f"{where}: image {name!r} is not a name relative to {folder}")
    image = folder / os.path.normpath(name)
    inside = folder.resolve()
    if inside not in image.resolve().parents:
        raise DataError(f"{where}: image {name!r} leads outside {folder}")
    return image


def read_ship_index(root: str | Path) -> ShipIndex:
    """Read and validate the data set's ``train.csv`` (in either of :data:`LAYOUTS`); every
    listed image must exist.

    A UTF-8 byte-order mark and whitespace around names and values are accepted. Errors name the
    file and the line (the header is line 1).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    table = csv_path(root)
    if not table.is_file():
        looked = " nor ".join(f"{layout.csv} (images in {layout.images}/)" for layout in LAYOUTS)
        raise DataError(f"{table}: file not found; {root} has neither {looked}")
    try:
        text = table.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"{table}: cannot read as UTF-8 text ({error.__class__.__name__})"
        ) from None
    reader = csv.reader(text.splitlines())
    try:
        rows = list(reader)
    except csv.Error as error:  # e.g. a NUL byte (Python < 3.11) or an over-long field
        raise DataError(f"{table}:{reader.line_num}: not valid CSV ({error})") from None
    header = [cell.strip().lower() for cell in (rows[0] if rows else [])]
    if not header or header == [""]:
        raise DataError(f"{table}: file is empty")
    missing = [column for column in CSV_COLUMNS if column not in header]
    if missing:
        raise DataError(
            f"{table}: missing column(s) {', '.join(missing)}; found {', '.join(header)}"
        )
    image_at, category_at = header.index("image"), header.index("category")
    folder = images_dir(root)
    paths: list[str] = []
    labels: list[int] = []
    seen: dict[str, int] = {}
    files: dict[tuple[int, int], tuple[int, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{table}:{line}"
        if len(row) <= max(image_at, category_at):
            raise DataError(f"{where}: expected {len(header)} fields, found {len(row)}")
        name = row[image_at].strip()
        if not name:
            raise DataError(f"{where}: empty image name")
        if name in seen:
            raise DataError(f"{where}: duplicate image {name!r} (first on line {seen[name]})")
        seen[name] = line
        label = _parse_category(row[category_at].strip(), where)
        image = _image_path(folder, name, where)
        if not image.is_file():
            raise DataError(f"{where}: image {name!r} not found in {folder}")
        # Two names for one file (``./x.jpg`` beside ``x.jpg``, a symbolic or a hard link)
        # would put one image in both splits: compare the files themselves (device, inode).
        facts = image.stat()
        key = (facts.st_dev, facts.st_ino)
        if key in files:
            first_line, first_name = files[key]
            raise DataError(
                f"{where}: image {name!r} is the same file as {first_name!r} on line {first_line}"
            )
        files[key] = (line, name)
        paths.append(str(image))
        labels.append(label)
    if not paths:
        raise DataError(f"{table}: no images listed")
    return ShipIndex(root, tuple(paths), tuple(labels))


def stratified_split(
    index: ShipIndex, validation_fraction: float = 0.2, seed: int = 0
) -> tuple[ShipIndex, ShipIndex]:
    """Split per class, deterministically for a seed; each class keeps its share in both parts."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(index.labels)
    train: list[int] = []
    validation: list[int] = []
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(labels == label)
        if members.size == 0:
            continue
        if members.size < 2:
            raise DataError(
                f"class {label + 1} ({CLASS_NAMES[label]}) has {members.size} image; "
                "at least 2 are needed to stratify"
            )
        members = rng.permutation(members)
        n_val = min(max(1, round(members.size * validation_fraction)), members.size - 1)
        validation.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return index.subset(sorted(train)), index.subset(sorted(validation))


#: Formats ``tf.io.decode_image`` (the pipeline, and so the check) decodes.
DECODABLE_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})
#: Images with more pixels than this are refused before decoding (PIL's own decompression-bomb
#: limit: about 256 MiB as 8-bit RGB, 1 GiB as the pipeline's float32 before resizing).
MAX_IMAGE_PIXELS = 89_478_485


@dataclasses.dataclass(frozen=True)
class BadImage:
    """An image file the pipeline could not decode, and why."""

    path: str
    reason: str


def _header(path: str) -> tuple[str | None, int | None]:
    """The format PIL names and the pixel count its header gives, without decoding pixels."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.format, image.size[0] * image.size[1]
    except Image.DecompressionBombError as error:  # far over the limit: PIL refuses to open
        found = re.search(r"\((\d+) pixels\)", str(error))
        return None, int(found.group(1)) if found else MAX_IMAGE_PIXELS + 1
    except Exception:  # PIL raises many kinds for unknown or damaged headers
        return None, None


def _tf_reason(error: Exception) -> str:
    """TensorFlow's error message without its op and function decorations."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\].*$", "", text) or type(error).__name__


def _image_problem(path: str) -> str | None:
    """Why the pipeline's own decoder (``tf.io.decode_image`` as :func:`decode_and_resize`
    calls it) cannot decode ``path``, or None: a file this passes cannot fail in training."""
    image_format, pixels = _header(path)
    if pixels and pixels > MAX_IMAGE_PIXELS:
        return f"{pixels:,} pixels, more than the limit of {MAX_IMAGE_PIXELS:,}"
    if not backend.is_tensorflow():
        # The backend-neutral path decodes with PIL (mpcore.data.arrays): ask PIL.
        if image_format and image_format not in DECODABLE_FORMATS:
            return f"unsupported format {image_format}"
        return _pil_problem(path) if image_format else "not an image"
    try:
        raw = tf.io.read_file(path)
        tf.io.decode_image(raw, channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as error:
        if image_format and image_format not in DECODABLE_FORMATS:
            return f"unsupported format {image_format}"
        reason = _tf_reason(error)
        if reason.startswith("Unknown image file format") or "empty" in reason or not image_format:
            return "not an image"
        # PIL's words are clearer where it fails too ("image file is truncated").
        return _pil_problem(path) or reason
    return None


def _pil_problem(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # only to word a failure TensorFlow has already found
        return (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return None


def find_bad_images(index: ShipIndex, workers: int = 4) -> list[BadImage]:
    """Decode every image of ``index`` once and return all that fail, in index order.

    Grayscale, RGBA and PNG-in-.jpg files are fine (the pipeline converts them to RGB).
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(_image_problem, index.paths))
    pairs = zip(index.paths, problems, strict=True)
    return [BadImage(path, problem) for path, problem in pairs if problem]


def without_images(index: ShipIndex, bad: Sequence[BadImage]) -> ShipIndex:
    """``index`` less the ``bad`` images."""
    drop = {image.path for image in bad}
    return index.subset([i for i, path in enumerate(index.paths) if path not in drop])


def describe_bad_images(bad: Sequence[BadImage]) -> str:
    """One line naming every bad image and its problem."""
    listed = "; ".join(f"{Path(image.path).name} ({image.reason})" for image in bad)
    return f"{len(bad)} unreadable image{'s' if len(bad) != 1 else ''}: {listed}"


def fingerprint(index: ShipIndex) -> dict[str, object]:
    """What identifies the data set's content: the SHA-256 of ``train.csv`` and of every listed
    image's bytes (in listed order), and the row count. ``--resume`` compares it."""
    images = hashlib.sha256()
    for path in index.paths:
        with open(path, "rb") as handle:
            images.update(hashlib.file_digest(handle, "sha256").digest())
    table = csv_path(index.root).read_bytes()
    return {
        "csv_sha256": hashlib.sha256(table).hexdigest(),
        "images_sha256": images.hexdigest(),
        "rows": len(index),
    }


def decode_and_resize(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read one file, decode JPEG/PNG/GIF/BMP by content to RGB, resize to a float32 square
    (bilinear, half-pixel centres, no antialiasing: :func:`mpcore.data.arrays.resize_bilinear`)."""
    raw = tf.io.read_file(path)
    # JPEG with libjpeg's accurate integer DCT (decode_image's default is the fast one), which is
    # what PIL uses: the backend-neutral path (mpcore.data.arrays) then sees the same pixels.
    image = tf.cond(
        tf.io.is_jpeg(raw),
        lambda: tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(raw, channels=3, expand_animations=False),
    )
    image = tf.image.resize(image, (image_size, image_size))
    return tf.ensure_shape(image, (image_size, image_size, 3))


def make_dataset(
    index: ShipIndex,
    image_size: int,
    batch_size: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    *,
    shuffle: bool = True,
    seed: int = 0,
    cache: bool = False,
    drop_remainder: bool = False,
    shard_policy: tf.data.experimental.AutoShardPolicy | None = None,
    order: EpochOrder | None = None,
) -> tf.data.Dataset:
    """The input pipeline: read, decode, resize, preprocess (float32), [cache], order, batch,
    prefetch. Labels are int32 class indices 0..4 for a sparse cross-entropy.

    Each epoch's order is ``order``'s (:class:`mpcore.data.arrays.EpochOrder`: one numpy
    permutation per epoch, shared with the backend-neutral path); without one, a new pass takes
    the next epoch's permutation of ``seed``, or file order when not ``shuffle``.

    ``shard_policy`` sets how a multi-worker ``tf.distribute`` strategy splits the data: ``DATA``
    (every worker runs the pipeline and keeps its share of each batch) works here; ``FILE`` does
    not, as the file names come from one in-memory tensor, not from files.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    count = len(index)
    if order is None:
        order = EpochOrder(count, seed, shuffle)
    paths = tf.constant(list(index.paths))
    labels = tf.constant(np.asarray(index.labels, dtype=np.int32))

    def load(position: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = decode_and_resize(tf.gather(paths, position), image_size)
        return preprocess(image), tf.gather(labels, position)

    def orders() -> tf.data.Dataset:
        # One element per pass, asked for when the pass's iterator starts: the epoch's order.
        return tf.data.Dataset.from_generator(
            lambda: iter([order.next_pass()]),
            output_signature=tf.TensorSpec([count], tf.int64),
        )

    parallel = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True}
    if not order.shuffle:
        dataset = tf.data.Dataset.range(count).map(load, **parallel)
        if cache:
            dataset = dataset.cache()
    elif not cache:
        # Ordered file positions are decoded in parallel, in order.
        dataset = orders().unbatch().map(load, **parallel)
    else:
        # Decoded once in file order and cached; each pass gathers the whole cache in its order
        # (tf.data's own full-size shuffle buffer held the same second copy).
        cached = tf.data.Dataset.range(count).map(load, **parallel).cache()
        dataset = tf.data.Dataset.zip(cached.batch(count), orders()).flat_map(
            lambda batch, positions: tf.data.Dataset.from_tensor_slices(
                (tf.gather(batch[0], positions), tf.gather(batch[1], positions))
            )
        )
    # The shuffled orders come from a generator, so tf.data cannot count the images; Keras then
    # learns the epoch's length only by running out of data, and says so as a UserWarning ("Your
    # input ran out of data; interrupting training") after every first epoch. The count is known.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    if shard_policy is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = shard_policy
        dataset = dataset.with_options(options)
    return dataset


def steps_per_epoch(num_images: int, batch_size: int, drop_remainder: bool = False) -> int:
    return num_images // batch_size if drop_remainder else math.ceil(num_images / batch_size)
