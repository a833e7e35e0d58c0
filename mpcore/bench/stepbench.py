"""The training-step benchmark harness: one precision x XLA combination, built in isolation.

:func:`prepared_step` applies the mode (which clears the Keras session and sets every global the
mode owns), builds and compiles the model, verifies it with
:func:`mpcore.precision.modes.check_model`, puts one batch on the device and runs the first step
(tracing and XLA compilation) on its own clock. A round (:meth:`PreparedStep.run_round`) is then K
compiled steps on that batch, ending in a device synchronisation, so a timer around it measures
the device, not the host's dispatch.

Two steps can be timed (``kind``). ``fit`` (the default) is Keras's own compiled train function,
``model.train_function``, called on an iterator of ``from_tensors(batch).repeat()`` distributed
by the model's strategy: exactly what ``model.fit`` runs per step (loss tracker, compiled
metrics, ``get_next`` from the host-side ``tf.data`` pipeline), ``steps_per_execution`` steps per
call. ``custom`` is
:func:`mpcore.train.custom_step.make_train_step` on the resident tensors: forward, loss, gradients
and the optimizer update, nothing else.

Under a ``tf.distribute`` strategy the model and optimizer are built in its scope, the batch is
``batch_size`` per replica (a global batch of ``batch_size x replicas``) split across the
replicas once, and each step runs on every replica (``strategy.run``) with summed gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import keras

from mpcore.models.flops import forward_flops, training_flops_per_step
from mpcore.names import STEP_KINDS
from mpcore.precision.modes import RunConfig, amp_rewrite_enabled, applied, autoclustering_enabled
from mpcore.probe import backend, telemetry
from mpcore.probe.backend import tf
from mpcore.probe.peaks import device_peak, peak_tflops
from mpcore.train.custom_step import make_train_step
from mpcore.train.fit import build_before_tracing, build_compiled, current_loss_scale
from mpcore.train.settings import TrainSettings
from mpcore.user.ownmodel import is_user_model


def sync_device() -> None:
    """Wait until every op queued on every device has finished (on any Keras backend)."""
    backend.sync()


@dataclasses.dataclass
class PreparedStep:
    """One combination's compiled training step, its device-resident batch, first-step time."""

    config: RunConfig
    settings: TrainSettings
    model: keras.Model | None
    #: One call runs ``steps_per_execution`` training steps and returns the loss tensor.
    step: Callable[[], tf.Tensor] | None
    images: tf.Tensor | None
    labels: tf.Tensor | None
    steps_per_round: int
    compile_seconds: float
    amp_rewrite_on: bool
    autoclustering_on: bool
    strategy: str = "none"
    replicas: int = 1
    kind: str = "fit"
    steps_per_execution: int = 1
    #: Each layer's output shape on the batch, for FLOPs where the graph's sizes are unknown
    #: (a user's fully convolutional or subclassed model); None: the graph's sizes serve.
    layer_shapes: dict[str, tuple] | None = None

    @property
    def global_batch(self) -> int:
        """Images one step trains on, over all replicas."""
        return self.settings.batch_size * self.replicas

    @classmethod
    def after_first_step(
        cls,
        config: RunConfig,
        settings: TrainSettings,
        model: keras.Model,
        step: Callable[[], Any],
        batch: tuple[Any, Any],
        steps_per_round: int,
        started: float,
        **fields: Any,
    ) -> PreparedStep:
        """The prepared step once its first call (which began at ``started``, a
        ``time.perf_counter()``) has run: its time is the compile time, and the rewrite and
        auto-clustering switches are read as the step was built under them."""
        shapes = None
        if is_user_model(settings.model) and fields.get("strategy", "none") == "none":
            from mpcore.models.trace import output_shapes

            shapes = output_shapes(model, batch[0])
        return cls(
            config=config,
            settings=settings,
            model=model,
            layer_shapes=shapes,
            step=step,
            images=batch[0],
            labels=batch[1],
            steps_per_round=steps_per_round,
            compile_seconds=time.perf_counter() - started,
            amp_rewrite_on=amp_rewrite_enabled(),
            autoclustering_on=autoclustering_enabled(),
            **fields,
        )

    def run_round(self) -> float:
        """Run ``steps_per_round`` steps and wait for the device; return the last loss."""
        loss = None
        for _ in range(self.steps_per_round // self.steps_per_execution):
            loss = self.step()
        value = float(loss)  # waits for the last forward pass...
        sync_device()  # ...and for its optimizer update, which the loss does not depend on
        return value

    def release(self) -> None:
        """Drop the model, step and batch so a failed run's traceback cannot pin device memory."""
        self.model = self.step = self.images = self.labels = None

    def describe(self) -> dict[str, Any]:
        """The identity of this run: mode, model, sizes, parameters, first-step time."""
        return {
            "precision": self.config.precision,
            "xla": self.config.xla,
            "step": self.kind,
            "steps_per_execution": self.steps_per_execution,
            "model": self.settings.model,
            "batch": self.settings.batch_size,
            "strategy": self.strategy,
            "replicas": self.replicas,
            "global_batch": self.global_batch,
            "image_size": self.settings.resolved_image_size,
            "parameters": self.model.count_params(),
            "model_source": model_source(self.settings.model),
            "forward_flops_per_sample": forward_flops(self.model, self.layer_shapes),
            "steps_per_round": self.steps_per_round,
            "compile_seconds": self.compile_seconds,
            "amp_rewrite_enabled": self.amp_rewrite_on,
            "autoclustering_enabled": self.autoclustering_on,
        }


def model_source(model: str) -> str:
    """Where a benchmark's model comes from: ``registry``, ``factory`` or ``file``."""
    from mpcore.user.loader import is_python_spec

    if not is_user_model(model):
        return "registry"
    return "factory" if is_python_spec(model) else "file"


def resident_batch(
    batch_size: int, image_size: int, num_classes: int, device: str, seed: int = 0
) -> tuple[tf.Tensor, tf.Tensor]:
    """A random batch of preprocessed-range images and labels, placed on ``device``."""
    generator = tf.random.Generator.from_seed(seed)
    with tf.device(device):
        images = generator.uniform((batch_size, image_size, image_size, 3), -1.0, 1.0)
        labels = generator.uniform((batch_size,), 0, num_classes, dtype=tf.int32)
        return tf.identity(images), tf.identity(labels)


def distributed_train_step(
    model: keras.Model, strategy: tf.distribute.Strategy, jit_compile: bool
) -> Callable[[Any, Any], tf.Tensor]:
    """A training step running :func:`make_train_step` on every replica of ``strategy`` (the
    optimizer all-reduces the gradients); returns the mean loss over the global batch."""
    # A Keras loss called in a replica context divides its mean by the replicas, so the summed
    # gradients (and the summed losses) are those of the mean over the global batch.
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with strategy.scope():
        replica_step = make_train_step(model, model.optimizer, loss_fn, jit_compile)

    @tf.function
    def step(images: Any, labels: Any) -> tf.Tensor:
        losses = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return step


def user_model_step(
    config: RunConfig, settings: TrainSettings, device: str
) -> tuple[keras.Model, Callable[[Any, Any], tf.Tensor], tuple[Any, Any]]:
    """A user's model (``settings.model``, a spec) for ``config``: loaded under float32 and
    converted (float32 head), compiled with the combination's ``jit_compile`` and checked by
    :func:`mpcore.precision.modes.check_model` where it applies
    (:func:`mpcore.train.fit.build_compiled`); with its loss (chosen from the head) and a seeded
    random batch shaped by it on ``device``.
    Call inside :func:`mpcore.precision.modes.applied`."""
    from mpcore.user.data import loss_function, random_batch, resolve_loss

    model = build_compiled(config, settings)
    loss, _ = resolve_loss(model, None)  # the compiled one: the user's, or chosen from the head
    x, y = random_batch(model, settings.batch_size, loss, settings.seed)  # labels to fit it
    with tf.device(device):
        # Tuples, not lists: tf.data would pack a list of inputs (or of labels) into one tensor.
        batch = keras.tree.map_structure(
            lambda a: tf.identity(tf.constant(a)), keras.tree.lists_to_tuples((x, y))
        )
    return model, loss_function(loss), batch


def fit_train_step(
    model: keras.Model, images: tf.Tensor, labels: tf.Tensor, steps_per_execution: int = 1
) -> Callable[[], tf.Tensor]:
    """What ``model.fit`` runs per step: the model's compiled train function on an iterator of
    the resident batch repeated, distributed by the model's strategy (as ``fit`` does, the
    default strategy included). One call runs ``steps_per_execution`` steps and returns the
    loss (the loss tracker's mean, as ``fit``'s logs report it).

    The first execution goes through ``model.fit`` itself, which makes the train function that
    the later calls reuse. The optimizer and the metrics are built before it traces (under a
    strategy fit does it, and a variable created while tracing fails there; without one
    :func:`build_before_tracing` does, or the train function would be traced twice).
    """
    model.steps_per_execution = steps_per_execution
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    build_before_tracing(model, data)
    model.fit(data, epochs=1, steps_per_epoch=steps_per_execution, shuffle=False, verbose=0)
    iterator = iter(model.distribute_strategy.experimental_distribute_dataset(data))
    train_function = model.train_function

    def step() -> tf.Tensor:
        return train_function(iterator)["loss"]

    return step


def custom_train_step(
    model: keras.Model,
    images: tf.Tensor,
    labels: tf.Tensor,
    jit_compile: bool,
    strategy: tf.distribute.Strategy | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
) -> tuple[Callable[[], tf.Tensor], Any, Any]:
    """:func:`make_train_step` (every replica's under a ``strategy``) bound to the resident
    batch; returns the step and the batch (under a strategy, split across the replicas once).
    ``loss_fn`` defaults to the registry models' sparse cross-entropy."""
    if strategy is None:
        loss_fn = loss_fn or keras.losses.SparseCategoricalCrossentropy()
        train_step = make_train_step(model, model.optimizer, loss_fn, jit_compile=jit_compile)
    else:
        train_step = distributed_train_step(model, strategy, jit_compile)
        # Split the global batch across the replicas once: each keeps its slice resident.
        whole = tf.data.Dataset.from_tensors((images, labels))
        images, labels = next(iter(strategy.experimental_distribute_dataset(whole)))
    return (lambda: train_step(images, labels)), images, labels


@contextlib.contextmanager
def isolated(config: RunConfig, seed: int) -> Iterator[list[PreparedStep]]:
    """Apply ``config`` (every global it owns) with the seed set; on exit release whatever
    :class:`PreparedStep` was put in the yielded list, clear the Keras session and collect
    garbage, so a failed combination's traceback cannot pin device memory for the next one."""
    made: list[PreparedStep] = []
    try:
        with applied(config):
            keras.utils.set_random_seed(seed)
            yield made
    finally:
        for prepared in made:
            prepared.release()
        keras.backend.clear_session()
        gc.collect()


@contextlib.contextmanager
def prepared_step(
    config: RunConfig,
    settings: TrainSettings,
    steps_per_round: int,
    num_classes: int = 5,
    device: str = "/CPU:0",
    strategy: tf.distribute.Strategy | None = None,
    strategy_name: str = "mirrored",
    kind: str = "fit",
    steps_per_execution: int = 1,
) -> Iterator[PreparedStep]:
    """Build ``config`` in isolation and yield its compiled step; restore every global on exit.

    ``kind`` is ``fit`` (Keras's train function, ``steps_per_execution`` steps per call, which
    must divide ``steps_per_round``) or ``custom`` (:func:`make_train_step`). With a
    ``strategy`` (called ``strategy_name`` in :meth:`PreparedStep.describe`),
    ``settings.batch_size`` is the batch of each replica.
    """
    if steps_per_round < 1:
        raise ValueError(f"steps per round must be positive, got {steps_per_round}")
    if kind not in STEP_KINDS:
        raise ValueError(f"unknown step {kind!r}; valid: {', '.join(STEP_KINDS)}")
    if kind == "custom":
        steps_per_execution = 1
    if steps_per_execution < 1 or steps_per_round % steps_per_execution:
        raise ValueError(
            f"steps per execution ({steps_per_execution}) must be positive and divide the steps "
            f"per round ({steps_per_round})"
        )
    with isolated(config, settings.seed) as made:
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        if is_user_model(settings.model):
            if strategy is not None:
                raise ValueError(f"{settings.model}: a user's model is timed without a strategy")
            model, loss_fn, (images, labels) = user_model_step(config, settings, device)
        else:
            # Raises unless the model is in its mode (and, under a strategy, mirrored).
            model = build_compiled(config, settings, strategy)
            loss_fn = None
            images, labels = resident_batch(
                settings.batch_size * replicas,
                settings.resolved_image_size,
                num_classes,
                device,
                settings.seed,
            )
        start = time.perf_counter()  # the first step: tracing, XLA compilation
        if kind == "fit":
            step = fit_train_step(model, images, labels, steps_per_execution)
        else:
            step, images, labels = custom_train_step(
                model, images, labels, config.compile_jit, strategy, loss_fn
            )
        float(step())
        sync_device()
        prepared = PreparedStep.after_first_step(
            config,
            settings,
            model,
            step,
            (images, labels),
            steps_per_round,
            start,
            strategy=strategy_name if strategy is not None else "none",
            replicas=replicas,
            kind=kind,
            steps_per_execution=steps_per_execution,
        )
        made.append(prepared)
        del model, step, images, labels
        yield prepared


class MemoryProbe:
    """Peak memory over a block: the backend's and NVML's on a GPU, the process RSS peak always.

    ``peak_memory_bytes`` is the Keras backend's peak (TensorFlow's, JAX's or torch's) on a GPU
    and the process's peak RSS otherwise
    (``ru_maxrss`` only grows, so on the CPU it is the session's peak up to this run).
    ``peak_memory_comparable`` says whether rows measured one after another can be compared: an
    allocator counter reset at the start of the block can, a session's RSS peak cannot
    (:func:`mpcore.bench.batchtrial.fresh_memory_fields` measures a row on its own instead).
    """

    def __init__(self, on_gpu: bool, device: str = "GPU:0") -> None:
        self.on_gpu = on_gpu
        self.device = device
        self.sampler = telemetry.Sampler()
        self.fields: dict[str, Any] = {}

    def __enter__(self) -> MemoryProbe:
        if self.on_gpu:
            if backend.is_tensorflow():
                telemetry.reset_tf_peak_memory(self.device)
            else:
                backend.reset_peak_memory()
            self.sampler.__enter__()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        tf_peak = framework_peak = None
        if self.on_gpu:
            self.sampler.__exit__(None, None, None)
            if backend.is_tensorflow():
                tf_peak = telemetry.tf_peak_memory_bytes(self.device)
            else:
                framework_peak = backend.peak_memory_bytes()
        nvml_peak = self.sampler.peak("memory_used_bytes")
        rss = telemetry.peak_rss_bytes()
        if framework_peak is None:
            framework_peak = tf_peak
        self.fields = {
            "peak_memory_bytes": framework_peak if self.on_gpu else rss,
            "peak_memory_source": backend.name() if self.on_gpu else "process_rss",
            "peak_memory_comparable": self.on_gpu and framework_peak is not None,
            "tf_peak_memory_bytes": tf_peak,
            "nvml_peak_used_bytes": None if nvml_peak is None else int(nvml_peak),
            "peak_rss_bytes": rss,
        }


def throughput_fields(
    prepared: PreparedStep,
    seconds_per_round: float,
    device_name: str | None,
    tf32_enabled: bool,
) -> dict[str, Any]:
    """Rates of a measured round: ms/step, images/s, FLOPs, TFLOP/s and fraction of peak."""
    seconds_per_step = seconds_per_round / prepared.steps_per_round
    flops = training_flops_per_step(prepared.model, prepared.global_batch, prepared.layer_shapes)
    achieved = flops / seconds_per_step / 1e12
    peak = peak_tflops(device_peak(device_name), prepared.config.precision, tf32_enabled)
    return {
        "ms_per_step": 1000.0 * seconds_per_step,
        "images_per_second": prepared.global_batch / seconds_per_step,
        "images_per_second_per_replica": prepared.settings.batch_size / seconds_per_step,
        "flops_per_step": flops,
        "achieved_tflops": achieved,
        "device": device_name or "CPU",
        "peak_tflops": peak,
        "fraction_of_peak": None if peak is None else achieved / peak,
        "final_loss_scale": current_loss_scale(prepared.model.optimizer),
    }
