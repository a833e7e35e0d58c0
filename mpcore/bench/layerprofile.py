"""Per-layer speed profile: which layers get slower in half precision, and by how much.

Each layer of the model (the outer model's layers; a nested model is one) is timed in isolation:
its forward and backward pass (gradients for its input and its trainable weights, with an
upstream gradient of ones) on a random batch of its own input shape and dtype, as one
``tf.function`` (``jit_compile`` for XLA ``jit``), ``steps`` calls then a device sync, the
fastest of ``rounds`` rounds, the configurations of one layer timed in turn. The whole
training step (forward, loss, backward, optimizer, as :mod:`mpcore.bench.stepbench` times it)
is timed alike, so the sum of the per-layer times can be set beside it: isolation leaves out
the loss, the optimizer, casts between layers and anything XLA fuses across layers.

A layer is *slower* in a half precision when its time there exceeds its float32 time under the
same XLA mode; the list is sorted by the time it adds, with the layer's share of the (half
precision) whole step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras

from mpcore.bench.stepbench import sync_device
from mpcore.models.flops import layer_forward_flops
from mpcore.names import config_name
from mpcore.precision.modes import RunConfig, applied
from mpcore.probe.backend import tf
from mpcore.train.custom_step import make_train_step
from mpcore.train.fit import compile_for
from mpcore.user.loader import LoadedModel
from mpcore.user.ownmodel import under_precision

HALF_PRECISIONS: tuple[str, ...] = ("mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class LayerProfile:
    """The per-layer profile of one model; ``to_dict()`` is what ``--json`` prints."""

    model: str
    source: str
    batch_size: int
    steps: int
    rounds: int
    precisions: list[str]
    xla_modes: list[str]
    #: One per layer: name, class, input shape, forward FLOPs per sample, ``ms`` per config.
    layers: list[dict[str, Any]]
    #: Milliseconds of the whole training step per config.
    step_ms: dict[str, float]
    device: str

    @property
    def configs(self) -> list[str]:
        return [config_name(p, x) for p in self.precisions for x in self.xla_modes]

    def layer_sum_ms(self, config: str) -> float:
        return sum(layer["ms"][config] for layer in self.layers if config in layer["ms"])

    def slower(self) -> list[dict[str, Any]]:
        """Layers slower in a half precision than in float32 (same XLA mode), by added time."""
        entries = []
        for precision in self.precisions:
            if precision not in HALF_PRECISIONS or "float32" not in self.precisions:
                continue
            for xla in self.xla_modes:
                half, base = config_name(precision, xla), config_name("float32", xla)
                for layer in self.layers:
                    half_ms, float32_ms = layer["ms"].get(half), layer["ms"].get(base)
                    if half_ms is None or float32_ms is None or half_ms <= float32_ms:
                        continue
                    entries.append(
                        {
                            "layer": layer["name"],
                            "class": layer["class"],
                            "precision": precision,
                            "xla": xla,
                            "float32_ms": float32_ms,
                            "half_ms": half_ms,
                            "added_ms": half_ms - float32_ms,
                            "ratio": half_ms / float32_ms if float32_ms > 0 else float("inf"),
                            "share_of_step": half_ms / self.step_ms[half],
                        }
                    )
        return sorted(entries, key=lambda entry: entry["added_ms"], reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "layer_sum_ms": {c: self.layer_sum_ms(c) for c in self.configs},
            "slower": self.slower(),
        }


def interleaved_ms(steps_by_config: dict[str, Callable[[], Any]], steps: int, rounds: int):
    """Milliseconds per call of each step: one untimed call each (tracing, compilation), then
    ``rounds`` rounds in which every step runs ``steps`` calls ending in a device sync, in turn,
    so that a change of the machine's load hits every configuration alike; the fastest round
    counts (the least disturbed by other work on a shared machine)."""
    for step in steps_by_config.values():
        step()
    sync_device()
    best = {name: float("inf") for name in steps_by_config}
    for _ in range(rounds):
        for name, step in steps_by_config.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync_device()
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return {name: 1000.0 * seconds for name, seconds in best.items()}


def recorded_calls(
    model: keras.Model, batch_size: int, seed: int = 0, unknown_size: int | None = None
) -> dict[str, tuple[keras.layers.Layer, tuple, dict]]:
    """Each direct layer of ``model`` that runs once, with the ``(args, kwargs)`` it was called
    with in a forward pass on a random batch (:mod:`mpcore.models.trace`): any model, a
    subclassed one or a layer taking several tensors (attention's query and value) included."""
    from mpcore.models.trace import recording
    from mpcore.user.data import random_batch

    x, _ = random_batch(model, batch_size, "mean_squared_error", seed, unknown_size)
    arguments: dict[int, tuple] = {}
    with recording(model, arguments) as calls:
        model(keras.tree.map_structure(tf.constant, x), training=False)
    return {layer.name: (layer, *arguments[id(layer)]) for layer, _ in calls}


def layer_step(layer: keras.layers.Layer, args: tuple, kwargs: dict, jit: bool) -> Callable:
    """The layer's forward and backward pass on the tensors it was called with, compiled."""
    kwargs = {k: v for k, v in kwargs.items() if k != "training"}
    structure = (args, kwargs)
    flat = keras.tree.flatten(structure)
    tensors = [i for i, item in enumerate(flat) if tf.is_tensor(item)]
    inputs = [tf.identity(flat[i]) for i in tensors]

    @tf.function(jit_compile=jit)
    def step(*xs: tf.Tensor) -> list[tf.Tensor]:
        filled = list(flat)
        for i, x in zip(tensors, xs, strict=True):
            filled[i] = x
        call_args, call_kwargs = keras.tree.pack_sequence_as(structure, filled)
        with tf.GradientTape() as tape:
            tape.watch([x for x in xs if x.dtype.is_floating])
            outputs = layer(*call_args, **call_kwargs, training=True)
        outputs = keras.tree.flatten(outputs)
        sources = [x for x in xs if x.dtype.is_floating] + list(layer.trainable_variables)
        gradients = tape.gradient(
            outputs, sources, output_gradients=[tf.ones_like(o) for o in outputs]
        )
        # Returned so that nothing is pruned from the graph.
        return outputs + [tf.convert_to_tensor(g) for g in gradients if g is not None]

    return lambda: step(*inputs)


def whole_step(
    model: keras.Model,
    config: RunConfig,
    batch_size: int,
    seed: int = 0,
    original: Any = None,
    unknown_size: int | None = None,
) -> Callable:
    """The whole training step as the benchmark times it: Adam (loss-scaled for float16), the
    loss of ``original`` (the model as the user gave it: its compiled loss, else chosen from
    its heads)."""
    from mpcore.user.data import loss_function, random_batch
    from mpcore.user.ownmodel import user_loss

    loss, metrics = user_loss(original if original is not None else model)
    compile_for(model, config, 1e-3, loss=loss, metrics=metrics)
    x, y = random_batch(model, batch_size, loss, seed, unknown_size)
    x, y = keras.tree.map_structure(tf.constant, (x, y))
    step = make_train_step(model, model.optimizer, loss_function(loss), config.compile_jit)
    return lambda: step(x, y)


def profile_layers(
    loaded: LoadedModel,
    batch_size: int,
    precisions: Sequence[str] = ("float32", *HALF_PRECISIONS),
    xla_modes: Sequence[str] = ("off", "jit"),
    steps: int = 5,
    rounds: int = 3,
    device: str = "/CPU:0",
    announce: Callable[[str], None] = lambda line: None,
    unknown_size: int | None = None,
) -> LayerProfile:
    """Time every layer of ``loaded`` and its whole training step under each precision x XLA
    mode (``off`` or ``jit``); the model is converted under each precision (float32 head, layers
    with explicit dtype policies, so they keep them outside :func:`applied`). Each layer's
    configurations are timed interleaved (:func:`interleaved_ms`)."""
    from mpcore.models.trace import output_shapes
    from mpcore.user.data import random_batch

    configs = [RunConfig(p, x) for p in precisions for x in xla_modes]
    # Output sizes on a real batch: a fully convolutional model's are unknown in its graph.
    sample, _ = random_batch(loaded.model, batch_size, "mean_squared_error", 0, unknown_size)
    traced = output_shapes(loaded.model, sample)
    models: dict[str, keras.Model] = {}
    for precision in precisions:
        with applied(RunConfig(precision, "off")):
            models[precision] = under_precision(loaded, precision)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tf.device(device):
        # Each precision's copy is run once on the same random batch and its layers' calls
        # recorded: every layer is then timed on the inputs it really gets, in its dtype.
        calls = {p: recorded_calls(models[p], batch_size, 0, unknown_size) for p in precisions}
        for layer in loaded.model.layers:
            if any(layer.name not in calls[p] for p in precisions):
                continue  # an input layer, or a shared layer: no one input to time it on
            timed = {
                c.name: layer_step(*calls[c.precision][layer.name], c.compile_jit) for c in configs
            }
            _, args, kwargs = calls["float32" if "float32" in calls else precisions[0]][layer.name]
            rows.append(
                {
                    "name": layer.name,
                    "class": type(layer).__name__,
                    "input_shape": [
                        [None, *t.shape[1:]]
                        for t in keras.tree.flatten((args, kwargs))
                        if tf.is_tensor(t)
                    ],
                    "forward_flops": layer_forward_flops(layer, traced),
                    "ms": interleaved_ms(timed, steps, rounds),
                }
            )
        announce(f"{len(rows)} layers in {time.perf_counter() - started:.1f} s")
        whole = {}
        for config in configs:
            with applied(config):
                whole[config.name] = whole_step(
                    models[config.precision], config, batch_size, 0, loaded.model, unknown_size
                )
        step_ms = interleaved_ms(whole, steps, rounds)
    announce(f"whole steps, {time.perf_counter() - started:.1f} s in all")
    return LayerProfile(
        model=loaded.model.name,
        source=loaded.source,
        batch_size=batch_size,
        steps=steps,
        rounds=rounds,
        precisions=list(precisions),
        xla_modes=list(xla_modes),
        layers=rows,
        step_ms=step_ms,
        device=device,
    )
