"""The backend-neutral input path's rate (mpcore.data.arrays) after its first epoch, against
the raw decode+resize it replaces. Runs on every Keras backend, without a GPU.

The first epoch decodes every generated JPEG once (PIL, threads) into the uint8 cache: that is
the warm-up round. Each timed round is one later epoch: every batch gathered from the memory-mapped
cache in the epoch's order and preprocessed in float32, one batch after another on this thread
(Keras's PyDataset workers only add to that). Before each round, timed by us, the same files go
through the raw decode+resize (:func:`mpcore.data.arrays.decode_all`), so both rates come from
interleaved rounds of the same run. A report, not a gate, like the tf.data pipeline's: the
target is 0.9x of the raw rate; the test fails only if the pipeline loses or invents images.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from mpcore.bench.pipelinerate import record_pipeline_rate
from mpcore.data.arrays import EpochOrder, ImageBatches, cached_images, decode_all
from mpcore.data.ships import read_ship_index
from mpcore.data.synthetic import write_synthetic_ships
from mpcore.models.registry import model_spec
from mpcore.user.ownmodel import is_user_model, preprocess_pixels

#: Side of the generated JPEGs, as in test_input_pipeline.py.
SOURCE_IMAGE_SIZE = 160
#: The cached pipeline should reach this fraction of the raw decode+resize rate.
TARGET_RATIO = 0.9


class ArrayPipelineBelowTarget(UserWarning):
    """The array pipeline is slower than :data:`TARGET_RATIO` of the raw decode+resize rate."""


@pytest.fixture(scope="session")
def array_ship_root(bench_options, tmp_path_factory: pytest.TempPathFactory) -> Path:
    per_class = -(-bench_options.pipeline_images // 5)
    return write_synthetic_ships(
        tmp_path_factory.mktemp("array-ships"), per_class, SOURCE_IMAGE_SIZE
    )


def test_array_pipeline(benchmark, bench_options, array_ship_root: Path, tmp_path: Path) -> None:
    options = bench_options
    index = read_ship_index(array_ship_root)
    if options.image_size is None:
        pytest.skip(f"{options.model} does not take images")
    preprocess = (
        preprocess_pixels if is_user_model(options.model) else model_spec(options.model).preprocess
    )
    import numpy as np

    labels = np.asarray(index.labels, dtype=np.int32)
    order = EpochOrder(len(index), seed=0)
    baseline_seconds: list[float] = []

    def time_baseline_epoch() -> None:
        start = time.perf_counter()
        assert len(decode_all(index.paths, options.image_size)) == len(index)
        baseline_seconds.append(time.perf_counter() - start)

    def epoch() -> int:
        # The first call decodes into the cache; later ones memory-map it.
        images = cached_images(index.paths, options.image_size, folder=tmp_path)
        batches = ImageBatches(images, labels, options.batch, preprocess, order)
        produced = sum(len(batches[i][1]) for i in range(len(batches)))
        batches.on_epoch_end()
        return produced

    benchmark.group = f"array pipeline {options.model} {options.image_size}px"
    warmup_rounds = 1
    produced = benchmark.pedantic(
        epoch, setup=time_baseline_epoch, rounds=options.rounds, warmup_rounds=warmup_rounds
    )
    assert produced == len(index)
    measured = record_pipeline_rate(
        benchmark,
        len(index),
        baseline_seconds,
        warmup_rounds,
        model=options.model,
        image_size=options.image_size,
        batch=options.batch,
        source_image_size=SOURCE_IMAGE_SIZE,
        target_ratio=TARGET_RATIO,
    )
    if measured is None:  # --benchmark-disable: one untimed round, nothing to compare
        return
    pipeline_rate, baseline_rate, ratio = measured
    if ratio < TARGET_RATIO:
        warnings.warn(
            ArrayPipelineBelowTarget(
                f"the array pipeline reaches {ratio:.0%} of the raw decode+resize rate "
                f"({pipeline_rate:.0f} vs {baseline_rate:.0f} images/s); target {TARGET_RATIO:.0%}"
            ),
            stacklevel=1,
        )
