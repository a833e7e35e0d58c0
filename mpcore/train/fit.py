"""Training a configuration with ``model.fit`` into a result record.

The result separates the first epoch (which includes tracing and XLA compilation) from the
steady state, and records the loss-scale value per epoch for float16 modes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from mpcore.data.arrays import EpochOrder, ImageBatches, cached_images
from mpcore.data.ships import ShipIndex, make_dataset, steps_per_epoch
from mpcore.models.registry import build_model, model_spec
from mpcore.precision.fp8 import float8_candidates, quantize_float8
from mpcore.precision.modes import RunConfig, applied, check_model
from mpcore.probe import backend
from mpcore.probe.backend import tf
from mpcore.probe.capability import machine_record
from mpcore.train.keras_dist import replicas as keras_replicas
from mpcore.train.settings import TrainSettings, op_determinism
from mpcore.train.target import parse_target, target_recorder
from mpcore.user.ownmodel import (
    build_user_model,
    is_user_model,
    preprocess_pixels,
    verify,
)


@dataclasses.dataclass
class RunResult:
    """The record of one configuration's training run (JSON-ready via :meth:`to_dict`)."""

    config: dict[str, Any]
    settings: dict[str, Any]
    train_images: int
    validation_images: int
    steps_per_epoch: int
    parameters: int
    epoch_seconds: list[float]
    loss: list[float]
    accuracy: list[float]
    val_loss: list[float]
    val_accuracy: list[float]
    loss_scale: list[float] | None
    machine: dict[str, Any]
    #: Replicas training in sync under a tf.distribute strategy (1 without one).
    replicas: int = 1
    #: Images per step over all replicas; None means the settings' (per-replica) batch size.
    global_batch: int | None = None
    #: CPU seconds the process used in each epoch's training span (see :class:`EpochTimer`).
    epoch_cpu_seconds: list[float] = dataclasses.field(default_factory=list)
    #: Under ``--target``: the target, whether and when it was reached (:mod:`mpcore.train.target`).
    target: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.global_batch is None:
            self.global_batch = int(self.settings["batch_size"]) * self.replicas

    @property
    def first_epoch_seconds(self) -> float:
        return self.epoch_seconds[0]

    @property
    def steady_epoch_seconds(self) -> float:
        """Median epoch time after the first (the first when there is only one)."""
        rest = self.epoch_seconds[1:] or self.epoch_seconds
        return statistics.median(rest)

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.steady_epoch_seconds / self.steps_per_epoch

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.steady_epoch_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "first_epoch_seconds": self.first_epoch_seconds,
            "steady_epoch_seconds": self.steady_epoch_seconds,
            "ms_per_step": self.ms_per_step,
            "images_per_second": self.images_per_second,
        }


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each training epoch (validation excluded), and the CPU seconds
    this process used in the same span (every thread: TensorFlow's pools, tf.data, Python).
    On a shared machine the wall time swings with the other processes while the CPU time
    stays put, so the two together tell contention from extra work."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._start = self._cpu_start = 0.0
        self._train_end: tuple[float, float] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start, self._cpu_start = time.perf_counter(), time.process_time()
        self._train_end = None

    def _stop(self) -> tuple[float, float]:
        if not backend.is_tensorflow():
            # JAX and torch dispatch asynchronously: the epoch ends when the device has the
            # last step's weights (TensorFlow's fit has read its metrics back by now).
            backend.wait_for(self.model.variables)
        return time.perf_counter(), time.process_time()

    def on_test_begin(self, logs: dict | None = None) -> None:
        # fit() runs validation inside the epoch; stop the clock where training ends.
        if self._train_end is None:
            self._train_end = self._stop()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        wall, cpu = self._train_end or self._stop()
        self.seconds.append(wall - self._start)
        self.cpu_seconds.append(cpu - self._cpu_start)


def current_loss_scale(optimizer: keras.optimizers.Optimizer) -> float | None:
    """The dynamic loss scale of a ``LossScaleOptimizer``, or None for other optimizers."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and optimizer.built:
        return float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))
    return None


class LossScaleRecorder(keras.callbacks.Callback):
    """The loss-scale value at the end of every epoch (float16 modes only)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = current_loss_scale(self.model.optimizer)
        if value is not None:
            self.values.append(value)


def compile_for(
    model: keras.Model,
    config: RunConfig,
    learning_rate: float,
    distributed: bool = False,
    loss: Any = "sparse_categorical_crossentropy",
    metrics: Sequence[str] = ("accuracy",),
) -> keras.Model:
    """Compile ``model`` for ``config``: Adam, sparse cross-entropy, explicit ``jit_compile``.

    ``float8`` first quantizes the (mixed_bfloat16-built) model's Dense/EinsumDense layers but
    the head (:func:`mpcore.precision.fp8.quantize_float8`), unless that is done already.

    ``mixed_float16`` gets its ``LossScaleOptimizer`` from ``compile``; ``amp_rewrite`` builds a
    float32 model, so compile would not wrap it and the wrapper is added here. ``distributed``
    (compiling inside a ``tf.distribute`` scope) swaps in a loss-scale optimizer that skips a
    step when *any* replica overflowed; Keras's own only looks at the first replica's gradients.
    """
    if config.precision == "float8" and not any(
        layer.quantization_mode == "float8" for layer in float8_candidates(model)
    ):
        # Before compile: quantizing adds the scale and amax-history variables.
        quantize_float8(model)
    optimizer: keras.optimizers.Optimizer = keras.optimizers.Adam(learning_rate)
    if distributed and config.uses_loss_scaling:
        # tf.distribute only: replicas is imported here so the JAX/torch path needs no TensorFlow.
        from mpcore.train.replicas import ReplicaConsistentLossScaleOptimizer

        optimizer = ReplicaConsistentLossScaleOptimizer(optimizer)
    elif config.precision == "amp_rewrite":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        # None, not []: Keras 3.10 refuses an empty list for a model with several outputs.
        metrics=list(metrics) or None,
        jit_compile=config.compile_jit,
    )
    return model


def build_compiled(
    config: RunConfig, settings: TrainSettings, strategy: tf.distribute.Strategy | None = None
) -> keras.Model:
    """Build and compile the settings' model; call inside :func:`mpcore.precision.modes.applied`.

    With a ``strategy`` the model and its optimizer are created in ``strategy.scope()``, so their
    variables are mirrored across the replicas (checked).
    """
    if is_user_model(settings.model):
        # A user's model, loaded fresh and converted under the mode (float32 head).
        model, loss, metrics = build_user_model(config, settings.model, settings.image_size)
        compile_for(model, config, settings.learning_rate, loss=loss, metrics=metrics)
        verify(model, config)
        return model
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(
            settings.model,
            settings.resolved_image_size,
            weights=settings.weights,
            float16_input=settings.float16_input,
        )
        compile_for(model, config, settings.learning_rate, distributed=strategy is not None)
    check_model(model, config)
    if strategy is not None:
        from mpcore.train.replicas import check_replicated

        check_replicated(model, strategy)
    return model


def build_before_tracing(model: keras.Model, data: Any) -> None:
    """Create the variables that training adds to a compiled model (the optimizer's slots and
    step counter, a loss scale, the compiled metrics' totals) before ``fit`` traces its train
    function, as Keras itself does under a ``tf.distribute`` strategy and on JAX and torch.

    Without a strategy, Keras on TensorFlow defers them to the first trace of the train function,
    and a ``tf.function`` that creates variables on its first call is traced a second time,
    without them, before it runs: twice the tracing and graph building of the whole training
    step, the forward pass, the gradients and every variable's update. For the 91-layer MobileNet
    (alpha 0.25, 48 px, batch 8, a 2-core CPU) the first epoch took 16.3 s with the second trace
    and 6.7 s without it (this build: 0.55 s). ``data`` is the ``tf.data.Dataset`` that ``fit``
    will read (its element spec shapes the symbolic build); any other input is left to Keras."""
    if not backend.is_tensorflow() or not isinstance(data, tf.data.Dataset):
        return
    if model.distribute_strategy is not tf.distribute.get_strategy():
        return  # the model's own strategy: fit builds everything before tracing by itself
    # Keras's own build (what fit calls under a strategy): a symbolic forward pass, the
    # compiled loss and metrics on its outputs, then the optimizer on the trainable variables.
    # Private: a Keras without it traces twice, as before.
    build = getattr(model, "_symbolic_build", None)
    if build is not None:
        build(data_batch=data.element_spec)


def train(
    config: RunConfig,
    settings: TrainSettings,
    train_index: ShipIndex,
    validation_index: ShipIndex,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
    strategy: tf.distribute.Strategy | None = None,
) -> RunResult:
    """Train ``settings.model`` under ``config`` with ``model.fit`` and return its record.

    With a ``strategy`` (see :mod:`mpcore.train.replicas`), ``settings.batch_size`` is the batch of
    each replica and every step trains on ``batch_size x num_replicas_in_sync`` images; the
    datasets are sharded by data (each worker keeps its slice of every global batch), which
    works for file lists and generated data alike.
    """
    replicas = strategy.num_replicas_in_sync if strategy is not None else keras_replicas()
    global_batch = settings.batch_size * replicas
    if global_batch > len(train_index):
        per_replica = f" ({settings.batch_size} per replica x {replicas})" if replicas > 1 else ""
        raise ValueError(
            f"batch size {global_batch}{per_replica} is larger than the training split "
            f"({len(train_index)} images)"
        )
    if config.compile_jit and settings.resolved_deterministic:
        # Keras silently turns jit_compile=True off under op determinism (check_model would then
        # refuse the model), so an XLA jit run trains without determinism, and records that.
        settings = dataclasses.replace(settings, deterministic=False)
    preprocess = (
        preprocess_pixels
        if is_user_model(settings.model)
        else model_spec(settings.model).preprocess
    )
    size = settings.resolved_image_size
    shard_policy = tf.data.experimental.AutoShardPolicy.DATA if strategy is not None else None
    # Across workers, a short last batch can leave one worker an empty share; its NaN loss is
    # all-reduced into every worker's weights, so multi-worker training drops that batch.
    # Under any strategy, a last batch smaller than the replica count leaves a replica an empty
    # shard, on which oneDNN's BatchNormalization (TensorFlow's CPU default) fails
    # ("Incompatible shapes: [16] vs. [3]"): that batch (fewer images than replicas) is dropped.
    remainder = len(train_index) % global_batch
    drop_last = (
        strategy is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    ) or (0 < remainder < replicas)
    if replicas > 1 and strategy is None:
        # keras.distribution shards each batch evenly over the devices: a last batch that does
        # not split evenly is dropped (train and validation alike).
        drop_last = drop_last or remainder % replicas != 0
    trained_images = steps_per_epoch(len(train_index), global_batch, drop_last) * global_batch
    # Validation alike: the few images of such a last batch are not evaluated (and not counted).
    drop_last_validation = 0 < len(validation_index) % global_batch < replicas or (
        replicas > 1 and strategy is None and len(validation_index) % global_batch % replicas != 0
    )
    validated_images = len(validation_index) - (
        len(validation_index) % global_batch if drop_last_validation else 0
    )
    with applied(config), op_determinism(settings.resolved_deterministic):
        keras.utils.set_random_seed(settings.resolved_init_seed)
        model = build_compiled(config, settings, strategy)
        # One numpy permutation per epoch, set by Keras at each epoch's start, orders the
        # training data on either input path (mpcore.data.arrays.EpochOrder).
        order = EpochOrder(len(train_index), settings.resolved_init_seed)
        train_data = _make_dataset(
            train_index,
            size,
            global_batch,
            preprocess,
            order=order,
            seed=settings.resolved_init_seed,
            cache=settings.cache,
            drop_remainder=drop_last,
            shard_policy=shard_policy,
        )
        validation_data = _make_dataset(
            validation_index,
            size,
            global_batch,
            preprocess,
            shuffle=False,
            order=EpochOrder(len(validation_index), settings.seed, shuffle=False),
            cache=settings.cache,
            drop_remainder=drop_last_validation,
            shard_policy=shard_policy,
        )
        timer, scales = EpochTimer(), LossScaleRecorder()
        replica_sync = []
        if strategy is not None:
            from mpcore.train.replicas import ReplicaStatisticsAverager

            replica_sync.append(ReplicaStatisticsAverager(strategy))
        # Stops fit at the end of the epoch (validation included) that reaches --target.
        recorder = target_recorder(parse_target(settings.target)) if settings.target else None
        stopper = [recorder] if recorder is not None else []
        build_before_tracing(model, train_data)
        history = model.fit(
            train_data,
            validation_data=validation_data,
            epochs=settings.epochs,
            shuffle=False,  # the input pipeline orders the data, seeded
            callbacks=[order.callback(), timer, scales, *replica_sync, *callbacks, *stopper],
            verbose=verbose,
        )
        logs = history.history
        return RunResult(
            config=config.to_dict(),
            settings=settings.to_dict(),
            train_images=min(len(train_index), trained_images),
            validation_images=validated_images,
            steps_per_epoch=steps_per_epoch(len(train_index), global_batch, drop_last),
            parameters=model.count_params(),
            epoch_seconds=timer.seconds,
            epoch_cpu_seconds=timer.cpu_seconds,
            loss=[float(v) for v in logs["loss"]],
            accuracy=[float(v) for v in logs.get("accuracy", [])],
            val_loss=[float(v) for v in logs["val_loss"]],
            val_accuracy=[float(v) for v in logs.get("val_accuracy", [])],
            loss_scale=scales.values if config.uses_loss_scaling else None,
            machine=machine_record(),
            replicas=replicas,
            global_batch=global_batch,
            target=recorder.result() if recorder else None,
        )


def _make_dataset(index: Any, size: int, batch: int, preprocess: Any, **options: Any) -> Any:
    """The input pipeline: tf.data on TensorFlow, the backend-neutral :class:`ImageBatches`
    (decoded, cached uint8 arrays) on JAX and torch; the ship images or a user's arrays
    (:class:`mpcore.user.ownmodel.ArraySplit`)."""
    order: EpochOrder = options.pop("order")
    drop_remainder = options.get("drop_remainder", False)
    if not backend.is_tensorflow():
        if isinstance(index, ShipIndex):
            images, labels = cached_images(index.paths, size), np.asarray(index.labels, np.int32)
            return ImageBatches(images, labels, batch, preprocess, order, drop_remainder)
        return ImageBatches(index.x, index.y, batch, None, order, drop_remainder)
    if not isinstance(index, ShipIndex):
        return index.dataset(batch, drop_remainder=drop_remainder, order=order)
    return make_dataset(index, size, batch, preprocess, order=order, **options)
