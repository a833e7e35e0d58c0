"""``mpbench run``'s distribution options (``--strategy``, ``--workers``, ``--cpu-replicas``)
checked together into a :class:`Distribution`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mpcore.face.common import UsageError
from mpcore.train.placement import cpu_replicas_problem


@dataclasses.dataclass(frozen=True)
class Distribution:
    """How ``mpbench run`` distributes each configuration (``--strategy``, ``--workers``,
    ``--cpu-replicas``) and how many replicas that is, when known before training."""

    strategy: str
    workers: int
    cpu_replicas: int
    replicas: int | None
    #: False on the hosts of a multi-host cluster other than the chief (their results are
    #: not the run's).
    chief: bool = True
    task_index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self, batch_size: int) -> str:
        return (
            f"strategy {self.strategy}: "
            + (f"{self.workers} local worker(s), " if self.workers else "")
            + (f"{self.replicas} replica(s), " if self.replicas else "")
            + f"batch {batch_size} per replica; each configuration also runs without "
            "a strategy (one replica) for the scaling efficiency"
        )


def parse_distribution(args: argparse.Namespace, gpu_count: int) -> Distribution:
    """Validate the distribution options together; one usage error for a bad combination."""
    from mpcore.face.run_backend import keras_backend, keras_distribution

    if keras_backend() != "tensorflow":
        strategy, cpu_replicas, replicas = keras_distribution(args, gpu_count)
        return Distribution(strategy, 0, cpu_replicas, replicas)
    from mpcore.train.replicas import StrategyError, is_chief, parse_strategy, read_tf_config

    try:
        strategy = parse_strategy(args.strategy or ("multiworker" if args.workers else "none"))
    except StrategyError as error:
        raise UsageError(f"--strategy: {error}") from None
    if args.workers and strategy != "multiworker":
        raise UsageError(
            f"--workers {args.workers} runs local multiworker workers; it cannot be combined "
            f"with --strategy {strategy}"
        )
    problem = cpu_replicas_problem(args.cpu_replicas, strategy, gpu_count)
    if problem:
        raise UsageError(f"--cpu-replicas {problem}")
    if strategy == "mirrored":
        replicas = args.cpu_replicas or gpu_count or 1
        return Distribution(strategy, 0, args.cpu_replicas or 0, replicas)
    if strategy != "multiworker":
        return Distribution(strategy, 0, 0, 1)
    if args.workers:
        return Distribution(strategy, args.workers, 0, args.workers * max(gpu_count, 1))
    try:
        tf_config = read_tf_config()  # fail here, not in every worker
    except StrategyError as error:
        raise UsageError(str(error)) from None
    index = int(tf_config["task"]["index"])
    return Distribution(strategy, 0, 0, None, chief=is_chief(tf_config), task_index=index)
