"""Run by tests/test_distribute.py in a fresh process: MirroredStrategy over two logical CPUs.

The CPU must be split into logical devices before TensorFlow initialises its devices, which the
pytest process has long done, hence a separate process. Usage::

    python tests/mirrored_probe.py DATA_ROOT [BENCHMARK_JSON]

prints one JSON document (last line of stdout) with the measurements the tests assert on. With
``BENCHMARK_JSON`` the process first runs the mirrored training-step benchmark (a pytest session
of ``benchmarks/`` with ``--mp-cpu-replicas 2``, whose plugin splits the CPU), writing
pytest-benchmark's JSON there and its report to stdout: one TensorFlow start-up for both, which
need the same split CPU.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from mpcore.data.ships import read_ship_index, stratified_split
from mpcore.precision.modes import ModeMismatchError, RunConfig, applied, check_model
from mpcore.run.process import end_process
from mpcore.train.fit import build_compiled, train
from mpcore.train.replicas import check_replicated, configure_logical_cpus, make_strategy
from mpcore.train.settings import TrainSettings

PER_REPLICA_BATCH = 8
IMAGE_SIZE = 16
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
#: The benchmark's tiny settings: mixed_float16 (a loss scale under the strategy), 4 images per
#: replica at 16 px, 2 rounds of 2 steps.
BENCHMARK_OPTIONS = (
    *("--mp-allow-cpu", "--mp-xla=off", "--mp-image-size=16", "--mp-batch=4"),
    *("--mp-precision=mixed_float16", "--mp-strategy=mirrored", "--mp-cpu-replicas=2"),
    *("--mp-steps=2", "--mp-rounds=2", "--mp-warmup-rounds=0"),
)


class WeightUpdate(keras.callbacks.Callback):
    """What training changed in the trainable weights, as one flat vector."""

    def _flat(self) -> np.ndarray:
        weights = self.model.trainable_weights
        return np.concatenate([keras.ops.convert_to_numpy(w).ravel() for w in weights])

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.initial = self._flat()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.update = self._flat() - self.initial


class SynchronizedBatchNorm(keras.callbacks.Callback):
    """Switch every BatchNormalization layer to batch statistics over all replicas.

    Set before the training step is first traced, so the whole run uses it.
    """

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True


def update_agreement(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """How far two runs' weight updates agree: cosine, and ||a - b|| / ||a||."""
    cosine = np.dot(first, second) / (np.linalg.norm(first) * np.linalg.norm(second))
    return {
        "cosine": float(cosine),
        "relative_difference": float(np.linalg.norm(first - second) / np.linalg.norm(first)),
    }


def one_epoch(
    precision: str,
    strategy: tf.distribute.Strategy | None,
    splits: tuple,
    synchronized_batch_norm: bool = False,
) -> dict[str, object]:
    """One epoch on the same global batch of 16: 8 per replica x 2, or 16 on one device."""
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    settings = TrainSettings(
        model="small",
        image_size=IMAGE_SIZE,
        batch_size=PER_REPLICA_BATCH * 2 // replicas,
        epochs=1,
        learning_rate=1e-3,
    )
    probe = WeightUpdate()
    callbacks = [probe, *([SynchronizedBatchNorm()] if synchronized_batch_norm else [])]
    result = train(RunConfig(precision, "off"), settings, *splits, callbacks, strategy=strategy)
    record = result.to_dict()
    return {
        key: record[key]
        for key in ("replicas", "global_batch", "steps_per_epoch", "loss", "val_loss")
    } | {
        "loss_scale": record["loss_scale"],
        "images_per_second": record["images_per_second"],
        "update": probe.update,
    }


def overflow_on_one_replica(strategy: tf.distribute.Strategy, replica: int) -> dict[str, object]:
    """One mixed_float16 step where only ``replica``'s half of the batch overflows float16.

    A sample weight of 1e4 makes that replica's (float32) loss huge, so its loss-scaled float16
    gradients overflow while the forward pass stays finite. The step must be skipped on every
    replica and the one shared loss scale halved.
    """
    config = RunConfig("mixed_float16", "off")
    settings = TrainSettings(model="small", image_size=IMAGE_SIZE, batch_size=PER_REPLICA_BATCH)
    with applied(config):
        keras.utils.set_random_seed(0)
        model = build_compiled(config, settings, strategy)
        global_batch = PER_REPLICA_BATCH * strategy.num_replicas_in_sync
        rng = np.random.default_rng(0)
        images = rng.random((global_batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
        labels = np.arange(global_batch, dtype=np.int32) % 5
        sample_weights = np.ones(global_batch, dtype=np.float32)
        # The distributed dataset hands consecutive slices of a batch to consecutive replicas.
        start = replica * PER_REPLICA_BATCH
        sample_weights[start : start + PER_REPLICA_BATCH] = 1e4
        batch = tf.data.Dataset.from_tensor_slices((images, labels, sample_weights))
        before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        model.fit(batch.batch(global_batch), epochs=1, verbose=0)
        after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        scale = model.optimizer.dynamic_scale.value
        check_replicated(model, strategy)  # the optimizer is built now: its variables too
        return {
            "scale_is_mirrored": isinstance(scale, tf.distribute.DistributedValues)
            and scale.synchronization != tf.VariableSynchronization.ON_READ,
            "scale_copies": [float(v) for v in strategy.experimental_local_results(scale)],
            "weights_finite": all(np.isfinite(w).all() for w in after),
            "weights_unchanged": all(
                np.array_equal(a, b) for a, b in zip(before, after, strict=True)
            ),
        }


def xla_checks(strategy: tf.distribute.Strategy) -> dict[str, object]:
    """check_model verifies jit_compile under a strategy; "auto" would not give the jit mode."""
    settings = TrainSettings(model="small", image_size=IMAGE_SIZE, batch_size=PER_REPLICA_BATCH)
    verified = {}
    for xla in ("off", "jit"):
        config = RunConfig("mixed_float16", xla)
        with applied(config):
            model = build_compiled(config, settings, strategy)  # runs check_model
            verified[xla] = model.jit_compile
    config = RunConfig("mixed_float16", "jit")
    with applied(config):
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, dtype="float32")])
            model.compile(optimizer="adam", loss="mse", jit_compile="auto")
        try:
            check_model(model, config)
            auto_rejected = ""
        except ModeMismatchError as error:
            auto_rejected = str(error)
    return {"jit_compile": verified, "auto_rejected": auto_rejected}


def benchmark(json_path: str) -> int:
    """``pytest benchmarks/test_train_step.py`` under MirroredStrategy over two logical CPUs,
    in this process; its exit status. The plugin splits the CPU (``--mp-cpu-replicas``), so this
    must come before any other TensorFlow work."""
    import pytest

    return int(
        pytest.main(
            [
                str(BENCHMARKS / "test_train_step.py"),
                *("-p", "no:randomly", "-p", "no:cacheprovider", "-q", "-rs"),
                *("--rootdir", str(BENCHMARKS), *BENCHMARK_OPTIONS),
                f"--benchmark-json={json_path}",
            ]
        )
    )


def main(data_root: str, benchmark_json: str | None = None) -> None:
    benchmark_status = None
    if benchmark_json:
        benchmark_status = benchmark(benchmark_json)  # splits the CPU in two
    else:
        # Importing TensorFlow leaves its devices uninitialised; the first op would fix them.
        configure_logical_cpus(2)
    strategy = make_strategy("mirrored")
    splits = stratified_split(read_ship_index(data_root), 0.2, seed=0)
    runs = {}
    # The single-device baseline also runs under a (one-device) strategy: Keras's fit draws one
    # batch for its symbolic build under any strategy, which advances the seeded shuffle, so
    # only then do both runs see the same batches in the same order.
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    variants = {"float32": (False, True), "mixed_float16": (True,)}
    for precision, synchronized_variants in variants.items():
        single = one_epoch(precision, one_device, splits)
        runs[precision] = {"single": single}
        for synchronized in synchronized_variants:
            name = "mirrored_sync_bn" if synchronized else "mirrored"
            # Asked for anew each run, as a caller would: it must be the same strategy (a second
            # MirroredStrategy would make the mixed_float16 run abort in an all-reduce).
            run = one_epoch(precision, make_strategy("mirrored"), splits, synchronized)
            run["update_vs_single"] = update_agreement(single["update"], run["update"])
            runs[precision][name] = run
    for by_name in runs.values():
        for run in by_name.values():
            del run["update"]
    report = {
        "devices": [device for device in strategy.extended.worker_devices],
        "replicas": strategy.num_replicas_in_sync,
        "runs": runs,
        "overflow_on_replica_1": overflow_on_one_replica(strategy, replica=1),
        "xla": xla_checks(strategy),
        "benchmark_status": benchmark_status,
    }
    sys.stdout.flush()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
    # The report is out: leave without the interpreter's teardown, which once TensorFlow has
    # run ops takes 1.0-1.5 s and about 0.9 CPU-second and checks nothing, as a forked worker
    # leaves (mpcore.run.process.end_process).
    end_process(0)
