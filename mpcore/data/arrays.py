"""The backend-neutral input path: decoded images in a uint8 array, served by a Keras PyDataset.

On JAX and torch `mpbench run` reads the ship layout, the generated set and a user's arrays
through :class:`ImageBatches` (a ``keras.utils.PyDataset``) instead of tf.data, so TensorFlow need
not be installed. The images are decoded once (PIL, threads), resized exactly as
``tf.image.resize`` does (bilinear, half-pixel centres, no antialiasing; :func:`resize_bilinear`)
and kept as one ``(n, size, size, 3)`` uint8 array, cached on disk as a ``.npy`` file that every
later worker memory-maps. Each batch is gathered from it in the epoch's order and preprocessed on
the host in float32 with the model's own preprocessing.

Order: both pipelines take each epoch's order from :class:`EpochOrder`, one numpy permutation
per epoch (``default_rng([seed, epoch])``), so a run on either path trains on the same images
in the same order (docs/backends.md says why this replaced tf.data's own shuffle).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np

#: The cache folder's variable, as `mpbench run` reads it for the generated set.
CACHE_ENV = "MPBENCH_CACHE"


class EpochOrder:
    """The order of ``n`` items in each epoch: a permutation from ``default_rng([seed, epoch])``,
    or ``0..n-1`` without shuffling.

    Keras tells the epoch through :meth:`callback` (``fit`` iterates the data once more than it
    trains, to build the model, so counting passes would shift the order by one). Without the
    callback every new pass (:meth:`next_pass`) takes the next epoch's order."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.epoch = 0
        self.driven = False
        self._passes = 0
        self._cached: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        if self._cached is None or self._cached[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            else:
                order = np.arange(self.n)
            self._cached = (epoch, order.astype(np.int64))
        return self._cached[1]

    def next_pass(self) -> np.ndarray:
        """The order of the pass starting now (tf.data asks at each new iterator)."""
        if self.driven:
            return self.order()
        epoch, self._passes = self._passes, self._passes + 1
        return self.order(epoch)

    def end_pass(self) -> None:
        """A pass ended (the PyDataset's ``on_epoch_end``); undriven, the next epoch begins."""
        if not self.driven:
            self.epoch += 1

    def callback(self) -> keras.callbacks.Callback:
        """A callback that sets the epoch before ``fit`` starts each epoch's pass."""
        self.driven = True
        order = self

        class SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                order.epoch = epoch

        return SetEpoch()


def _resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and the lerp weight per output index, as TensorFlow's
    ``ResizeBilinear`` with half-pixel centres computes them (float32 arithmetic)."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(source), in_size - 1).astype(np.int64)
    return lower, upper, (source - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.resize(image, (size, size))`` in numpy: bilinear, half-pixel centres, no
    antialiasing, float32 out (PIL's resize antialiases when shrinking, so it differs)."""
    pixels = image.astype(np.float32)
    top, bottom, y_lerp = _resize_weights(image.shape[0], size)
    left, right, x_lerp = _resize_weights(image.shape[1], size)
    x_lerp = x_lerp[None, :, None]
    rows_top, rows_bottom = pixels[top], pixels[bottom]
    upper = rows_top[:, left] + (rows_top[:, right] - rows_top[:, left]) * x_lerp
    lower = rows_bottom[:, left] + (rows_bottom[:, right] - rows_bottom[:, left]) * x_lerp
    return upper + (lower - upper) * y_lerp[:, None, None]


def decode_image(path: str) -> np.ndarray:
    """One file decoded by content to an RGB uint8 array (the first frame of an animation).

    PIL's JPEG decoder is libjpeg's accurate integer DCT with fancy upsampling, which is what
    the tf.data path asks ``decode_jpeg`` for (``INTEGER_ACCURATE``), so both decode alike."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_resized(path: str, size: int) -> np.ndarray:
    """One image decoded and resized to ``size`` x ``size``, rounded back to uint8."""
    resized = resize_bilinear(decode_image(path), size)
    return np.rint(np.clip(resized, 0, 255)).astype(np.uint8)


def decode_all(paths: Sequence[str], size: int, workers: int | None = None) -> np.ndarray:
    """Every image of ``paths`` decoded and resized, in order, as one uint8 array (PIL releases
    the GIL while it decodes, so threads scale)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
        for position, image in enumerate(pool.map(lambda p: decode_resized(p, size), paths)):
            out[position] = image
    return out


def cache_folder() -> Path:
    """``$MPBENCH_CACHE``, else ``$XDG_CACHE_HOME/mpbench``, else ``~/.cache/mpbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mpbench"


def cache_key(paths: Sequence[str], size: int) -> str:
    """What identifies a decoded array: the files (name, size, modification time) and the size."""
    digest = hashlib.sha256(f"decoded-v1 {size}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cached_images(paths: Sequence[str], size: int, folder: Path | None = None) -> np.ndarray:
    """The decoded uint8 array of ``paths``, memory-mapped from the cache, decoded and written
    there (atomically) on first use; in memory if the cache folder cannot be written."""
    folder = folder or cache_folder() / "decoded"
    target = folder / f"images-{cache_key(paths, size)}-{size}px.npy"
    if target.is_file():
        return np.load(target, mmap_mode="r")
    images = decode_all(paths, size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
            np.save(handle, images)
        os.replace(handle.name, target)
    except OSError:
        return images
    return np.load(target, mmap_mode="r")


class ImageBatches(keras.utils.PyDataset):
    """Batches of ``(preprocess(float32 images), int32 labels)`` in :class:`EpochOrder`'s order.

    ``images`` is any array indexable by a list of positions (a uint8 array, a memory map, or a
    structure of arrays for a user's model); ``preprocess`` runs on numpy float32 batches.
    Threads (``workers``), not processes: the array is shared, and a gather is a memcpy."""

    def __init__(
        self,
        images: Any,
        labels: Any,
        batch_size: int,
        preprocess: Callable[[np.ndarray], np.ndarray] | None,
        order: EpochOrder,
        drop_remainder: bool = False,
        workers: int = 2,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8)
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.preprocess, self.order = batch_size, preprocess, order
        self.drop_remainder = drop_remainder

    def __len__(self) -> int:
        batches = self.order.n / self.batch_size
        return math.floor(batches) if self.drop_remainder else math.ceil(batches)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        positions = self.order.order()[index * self.batch_size : (index + 1) * self.batch_size]
        x = keras.tree.map_structure(lambda a: _take(a, positions), self.images)
        y = keras.tree.map_structure(lambda a: _take(a, positions), self.labels)
        if self.preprocess is not None:
            x = self.preprocess(x.astype(np.float32))
        return x, y

    def on_epoch_end(self) -> None:
        self.order.end_pass()


def _take(array: Any, positions: np.ndarray) -> np.ndarray:
    # A memory map gathers fastest in file order; the batch is then put back in epoch order.
    ranks = np.argsort(positions, kind="stable")
    gathered = np.asarray(array[positions[ranks]])
    out = np.empty_like(gathered)
    out[ranks] = gathered
    return out
