"""Mixed precision under ``tf.distribute``: the pieces training needs on several replicas.

* :func:`make_strategy` builds ``none`` (no strategy), ``mirrored`` (``MirroredStrategy`` over
  the visible GPUs, else over the logical CPUs) or ``multiworker``
  (``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``).
* :class:`ReplicaConsistentLossScaleOptimizer` is the ``LossScaleOptimizer`` mpcore compiles
  under a strategy: it skips a step when *any* replica's gradients overflowed. Keras 3's own
  checks only the first replica's (not yet all-reduced) gradients, so an overflow on another
  replica is summed into the weights as inf/NaN under ``MirroredStrategy``, and under
  ``MultiWorkerMirroredStrategy`` the workers can take different branches and hang.
* :class:`ReplicaStatisticsAverager` keeps BatchNormalization's per-replica statistics equal.
* :func:`images_per_second_per_replica` and :func:`scaling_efficiency` turn results into
  scaling figures.

Launching local worker processes is not here: that is :mod:`mpcore.run.launcher`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mpcore.names import STRATEGIES, TF_CONFIG_ENV
from mpcore.precision.modes import ModeMismatchError


class StrategyError(ValueError):
    """A strategy cannot be built as asked (bad name, missing or invalid ``TF_CONFIG``)."""


def parse_strategy(name: str) -> str:
    """Return ``name`` if it is a known strategy, else raise ``ValueError`` listing them."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    return name


# --------------------------------------------------------------------------------------------
# Strategies


def configure_logical_cpus(count: int) -> None:
    """Split the CPU into ``count`` logical devices (so ``mirrored`` has replicas on a CPU).

    TensorFlow fixes its devices when it first initialises them, so call this at the start of a
    process, before any tensor exists.
    """
    if count < 1:
        raise ValueError(f"logical CPU count must be positive, got {count}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        raise RuntimeError(
            f"cannot split the CPU into {count} logical devices: TensorFlow has already "
            "initialised its devices in this process (call configure_logical_cpus first)"
        ) from None


def mirrored_devices() -> list[str]:
    """The devices ``mirrored`` replicates over: every visible GPU, else every logical CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    return [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]


def read_tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG`` of this process; :class:`StrategyError` if absent or invalid."""
    raw = os.environ.get(TF_CONFIG_ENV, "").strip()
    if not raw:
        raise StrategyError(
            f"strategy 'multiworker' needs {TF_CONFIG_ENV} (set it on every host, or start "
            "local workers with --workers N)"
        )
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"]["worker"]
        index = int(tf_config["task"]["index"])
        kind = tf_config["task"]["type"]
    except (ValueError, KeyError, TypeError):
        raise StrategyError(
            f"{TF_CONFIG_ENV} is not a cluster spec like "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if kind not in ("worker", "chief") or not isinstance(workers, list) or not workers:
        raise StrategyError(f"{TF_CONFIG_ENV}: expected a non-empty worker list and a worker task")
    if kind == "worker" and not 0 <= index < len(workers):
        raise StrategyError(f"{TF_CONFIG_ENV}: task index {index} is outside 0..{len(workers) - 1}")
    return tf_config


def is_chief(tf_config: Mapping[str, Any]) -> bool:
    """Whether this task writes the results: the chief, or worker 0 when there is no chief."""
    task = tf_config["task"]
    has_chief = bool(tf_config["cluster"].get("chief"))
    return task["type"] == "chief" or (not has_chief and int(task["index"]) == 0)


#: The strategies made in this process, by name and devices (see :func:`make_strategy`).
_MADE: dict[tuple[str, ...], tf.distribute.Strategy] = {}


def make_strategy(name: str, devices: Sequence[str] | None = None) -> tf.distribute.Strategy | None:
    """The strategy called ``name`` (None for ``none``).

    ``mirrored`` replicates over ``devices``, by default :func:`mirrored_devices`;
    ``multiworker`` reads ``TF_CONFIG`` and must be built before TensorFlow runs any op. Each
    strategy is made once per process and reused: a second ``MirroredStrategy`` hands out the
    first one's collective instance keys again, and its all-reduces then abort with "Shape
    mismatch in the collective instance" (seen training float32, then mixed_float16).
    """
    parse_strategy(name)
    if name == "none":
        return None
    if name == "mirrored":
        chosen = tuple(devices or mirrored_devices())
        key = (name, *chosen)
        if key not in _MADE:
            _MADE[key] = tf.distribute.MirroredStrategy(list(chosen))
        return _MADE[key]
    read_tf_config()
    if (name,) not in _MADE:
        _MADE[(name,)] = NestReducingMultiWorkerStrategy()
    return _MADE[(name,)]


class NestReducingMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` works the way Keras 3's ``fit`` calls it.

    Two calls fail with the stock strategy (keras-team/keras#20585): ``fit`` reduces its first
    (images, labels) batch, a nest, which ``reduce`` does not take ("Attempt to convert a value
    (PerReplica...)"); and it reduces every scalar metric with ``axis=0``, which a scalar does
    not have. Here each element of a nest is reduced in turn (in the same order on every
    worker), and a scalar is reduced across replicas, which is what ``axis=0`` means for it.
    """

    def reduce(self, reduce_op: Any, value: Any, axis: int | None) -> Any:
        reduce_one = super().reduce

        def reduce_item(item: Any) -> Any:
            rank = self.experimental_local_results(item)[0].shape.rank
            return reduce_one(reduce_op, item, None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_item, value)


def check_replicated(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Raise :class:`ModeMismatchError` unless ``model`` (and its optimizer, once built) was
    created in ``strategy.scope()``: a model built outside trains on one device only."""
    problems = []
    if model.distribute_strategy is not strategy:
        problems.append("the model was not built in the strategy's scope")
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.variables)
    if optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    local = [v.path for v in variables if not isinstance(v.value, tf.distribute.DistributedValues)]
    # With one replica (OneDeviceStrategy) variables stay plain; with more they must be mirrored.
    if local and strategy.num_replicas_in_sync > 1:
        problems.append(f"{len(local)} variable(s) are not mirrored, e.g. {local[0]}")
    if problems:
        raise ModeMismatchError(f"{type(strategy).__name__}: " + "; ".join(problems))


@keras.saving.register_keras_serializable(package="mpbench")
class ReplicaConsistentLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """A ``LossScaleOptimizer`` whose overflow check covers every replica's gradients.

    The finite flag is all-reduced before the step is applied or skipped, so all replicas skip
    together and the single (mirrored) loss scale halves once. Without a strategy, or with one
    replica, it is Keras's ``LossScaleOptimizer``.
    """

    def check_finite(self, grads: Sequence[Any]) -> Any:
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        overflowed = context.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
        )
        return tf.equal(overflowed, 0.0)


class ReplicaStatisticsAverager(keras.callbacks.Callback):
    """Average the per-replica copies of non-trainable statistics across the replicas.

    Keras 3 creates BatchNormalization's moving mean and variance with aggregation ``none``, so
    under ``tf.distribute`` each replica updates only its own copy from its own shard and the
    copies drift apart (the saved model gets whichever copy the first replica holds). tf.keras 2
    averaged them across replicas when read; this does the same before every validation and at
    the end of training, so all replicas, and all workers, hold identical weights.
    """

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        super().__init__()
        self.strategy = strategy
        self._average: Any = None

    def _build(self) -> Any:
        statistics = [
            variable
            for variable in self.model.non_trainable_variables
            if variable.aggregation == "none" and "float" in str(variable.dtype)
        ]

        def average_on_replica() -> None:
            context = tf.distribute.get_replica_context()
            for variable in statistics:
                # Reading in a replica context gives this replica's copy; the assignment (with
                # aggregation "none") writes this replica's copy, with the same mean everywhere.
                local = tf.identity(variable.value)
                variable.assign(context.all_reduce(tf.distribute.ReduceOp.MEAN, local))

        return tf.function(lambda: self.strategy.run(average_on_replica))

    def average(self) -> None:
        if self.strategy.num_replicas_in_sync == 1:
            return
        if self._average is None:
            self._average = self._build()
        self._average()

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.average()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.average()


def weight_checksums(model: keras.Model) -> dict[str, str]:
    """SHA-256 of each variable of ``model`` (this replica's copy), by variable path."""
    return {
        variable.path: hashlib.sha256(
            np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes()
        ).hexdigest()
        for variable in model.weights
    }


def weights_checksum(model: keras.Model) -> str:
    """One SHA-256 over every variable of ``model`` (this replica's copy), in layer order."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()
