"""The input-pipeline benchmarks' one measurement: the pipeline's images/s against the raw
decode+resize rate measured beside it, recorded in the benchmark's ``extra_info`` for the report
(``kind`` :data:`mpcore.bench.table.PIPELINE_KIND`). No TensorFlow here.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from mpcore.bench.table import PIPELINE_KIND


def record_pipeline_rate(
    benchmark: Any,
    images: int,
    baseline_seconds: Sequence[float],
    warmup_rounds: int,
    **fields: Any,
) -> tuple[float, float, float] | None:
    """``(pipeline_rate, baseline_rate, ratio)`` of a finished ``benchmark.pedantic`` run over
    ``images`` (the baseline's epochs, timed in its ``setup``, less the warm-up rounds), stored
    with ``fields`` in ``benchmark.extra_info``; None under ``--benchmark-disable`` (one
    untimed round, nothing to compare)."""
    if benchmark.stats is None:
        return None
    pipeline_rate = images / benchmark.stats.stats.median
    baseline_rate = images / statistics.median(baseline_seconds[warmup_rounds:])
    ratio = pipeline_rate / baseline_rate
    benchmark.extra_info.update(
        {
            "kind": PIPELINE_KIND,
            **fields,
            "images": images,
            "images_per_second": pipeline_rate,
            "baseline_images_per_second": baseline_rate,
            "pipeline_to_baseline": ratio,
        }
    )
    return pipeline_rate, baseline_rate, ratio
