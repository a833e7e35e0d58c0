"""Scale-out figures of a distributed run: images per second per replica and the scaling
efficiency against the single-device baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mpcore.names import name_of
from mpcore.run.schema import mode_of, strategy_of


def images_per_second_per_replica(result: Mapping[str, Any]) -> float:
    """Training throughput of one replica, from a ``RunResult.to_dict()`` record."""
    return float(result["images_per_second"]) / int(result.get("replicas", 1))


def scaling_efficiency(
    images_per_second: float, replicas: int, single_replica_images_per_second: float
) -> float:
    """Throughput per replica relative to one replica alone: 1.0 is perfect linear scaling."""
    if replicas < 1 or single_replica_images_per_second <= 0:
        raise ValueError("scaling efficiency needs replicas >= 1 and a positive baseline")
    return images_per_second / (replicas * single_replica_images_per_second)


def add_scaling(document: dict[str, Any]) -> None:
    """Give every finished distributed configuration a ``scaling`` entry: replicas, global
    batch, images/s per replica and the efficiency against the same mode without a strategy
    (one replica) in this run; efficiency is None while that baseline is missing or failed."""
    records = document["configurations"]
    single = {
        name_of(r["config"]): r["result"]
        for r in records
        if r.get("status") == "ok" and strategy_of(r["config"]) == "none"
    }
    for record in records:
        if record.get("status") != "ok" or strategy_of(record["config"]) == "none":
            continue
        result = record["result"]
        baseline_name = name_of(mode_of(record["config"]))
        baseline = single.get(baseline_name)
        record["scaling"] = {
            "strategy": strategy_of(record["config"]),
            "replicas": result["replicas"],
            "global_batch": result["global_batch"],
            "images_per_second_per_replica": images_per_second_per_replica(result),
            "baseline": baseline_name,
            "baseline_images_per_second": baseline["images_per_second"] if baseline else None,
            "scaling_efficiency": scaling_efficiency(
                result["images_per_second"], result["replicas"], baseline["images_per_second"]
            )
            if baseline
            else None,
        }
