"""A user's model: load it from a spec, rebuild it under a precision mode.

Model specs: a ``.keras`` (or legacy ``.h5``) file, ``package.module:factory`` (a callable that
returns a built Keras model, compiled or not; it gets the ``image_size``/``num_classes``/
``input_shape`` keywords only when its signature names them), or a model object. Data and loss
are in :mod:`mpcore.user.data`.

A model built under one dtype policy keeps it, so :func:`convert` clones a model under another
policy with its weights copied and its output layers in float32. Every problem with what the user
gave is one :class:`LoadError` whose message is one line naming the spec or file.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras.src.saving.serialization_lib import SafeModeScope

from mpcore.precision.modes import KERAS_POLICY, RunConfig, applied
from mpcore.user.spec import (
    LoadError,
    accepted_keywords,
    first_line,
    is_python_spec,
    resolve_attribute,
    users_code,
)

HALF_DTYPES: frozenset[str] = frozenset({"float16", "bfloat16"})


@dataclasses.dataclass
class LoadedModel:
    """A user's model and where it came from (``source`` is what the user wrote)."""

    model: keras.Model
    source: str
    kind: str  # "file", "factory" or "object"
    #: Makes the model afresh under the current dtype policy (a factory called again with the
    #: same keywords); how a subclassed model is rebuilt under another policy.
    remake: Callable[[], keras.Model] | None = None

    @property
    def precision(self) -> str:
        return model_precision(self.model)

    def build(self, precision: str, compile: bool = True) -> keras.Model:
        """The model as it runs under ``precision``: itself if it already does, else
        :func:`convert`'s copy."""
        if self.precision == KERAS_POLICY[precision]:
            return self.model
        return convert(self.model, precision, compile, remake=self.remake)


def _ensure_built(model: keras.Model, spec: str, input_shape: Any) -> keras.Model:
    if model.built and _has_graph(model):
        return model
    if not model.built and input_shape is not None:
        model.build((None, *tuple(input_shape)))
    if not model.built:
        raise LoadError(
            f"{spec}: the model is not built; give it a keras.Input or call model.build(shape)"
        )
    return model


def _has_graph(model: keras.Model) -> bool:
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def load_model(
    spec: str | os.PathLike[str] | keras.Model,
    *,
    image_size: int | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    compile: bool = True,
) -> LoadedModel:
    """Load the model ``spec`` names; raise :class:`LoadError` with one line if it cannot be."""
    if isinstance(spec, keras.Model):
        return LoadedModel(_ensure_built(spec, spec.name, input_shape), spec.name, "object")
    if not isinstance(spec, (str, os.PathLike)):
        raise LoadError(f"{spec!r}: not a model, a .keras file or a package.module:factory spec")
    text = os.fspath(spec)
    if is_python_spec(text):
        return _from_factory(text, image_size, num_classes, input_shape)
    return LoadedModel(_from_file(Path(text), compile), text, "file")


def _from_file(path: Path, compile: bool) -> keras.Model:
    if not path.exists():
        raise LoadError(f"{path}: file not found")
    if path.is_dir() or path.suffix not in (".keras", ".h5"):
        raise LoadError(
            f"{path}: not a .keras (or .h5) model file nor a package.module:factory spec"
        )
    try:
        with warnings.catch_warnings():
            # An unbuilt optimizer cannot take the saved slots; the check never trains.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = keras.saving.load_model(path, compile=compile)
    except Exception as error:  # zipfile, h5py, JSON and deserialisation errors all land here
        raise LoadError(
            f"{path}: not a loadable Keras model ({first_line(error)}); models with custom "
            "layers need them registered with keras.saving.register_keras_serializable"
        ) from None
    if not isinstance(model, keras.Model):
        raise LoadError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return _ensure_built(model, str(path), None)


def _from_factory(
    spec: str,
    image_size: int | None,
    num_classes: int | None,
    input_shape: tuple[int, ...] | None,
) -> LoadedModel:
    target = resolve_attribute(spec)
    if isinstance(target, keras.Model):
        return LoadedModel(_ensure_built(target, spec, input_shape), spec, "factory")
    if not callable(target):
        raise LoadError(f"{spec}: is a {type(target).__name__}, not a callable or a model")
    offered = {"image_size": image_size, "num_classes": num_classes, "input_shape": input_shape}
    keywords = accepted_keywords(target, {k: v for k, v in offered.items() if v is not None})

    def remake() -> keras.Model:
        try:
            with users_code(spec, "building the model"):
                model = target(**keywords)
        except LoadError:
            raise
        except Exception as error:  # the user's factory may raise anything
            raise LoadError(f"{spec}: the factory raised {first_line(error)}") from None
        if not isinstance(model, keras.Model):
            raise LoadError(f"{spec}: returned a {type(model).__name__}, not a Keras model")
        return _ensure_built(model, spec, input_shape)

    return LoadedModel(remake(), spec, "factory", remake)


# --------------------------------------------------------------------------------------------
# Precision: what a model runs under, and a clone under another policy


def model_precision(model: keras.Model) -> str:
    """The Keras policy a model runs under, from its layers with weights: ``float32``,
    ``mixed_float16`` or ``mixed_bfloat16`` (half compute, float32 variables)."""
    halves = {
        layer.compute_dtype
        for layer in leaf_layers(model)
        if layer.weights and layer.compute_dtype in HALF_DTYPES
    }
    if len(halves) > 1:
        raise LoadError(f"{model.name}: layers compute in both float16 and bfloat16")
    return f"mixed_{halves.pop()}" if halves else "float32"


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    for layer in model.layers:
        layers.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return layers


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers that produce the model's outputs (inside nested models, their last layers;
    for a subclassed model, the direct layers whose outputs ``call()`` returns)."""
    if not is_graph_model(model):
        return _subclassed_heads(model)
    heads: list[keras.layers.Layer] = []
    for output in _graph_outputs(model):
        layer = output._keras_history.operation
        heads.extend(head_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return list(dict.fromkeys(heads))


def _subclassed_heads(model: keras.Model) -> list[keras.layers.Layer]:
    # One forward pass on a small batch of zeros, its layers recorded: those whose output
    # tensors are the model's. Kept on the model (object.__setattr__: not tracked by Keras).
    cached = model.__dict__.get("_mpbench_heads")
    if cached is not None:
        return cached
    from mpcore.models.trace import recording

    try:
        inputs = [
            np.zeros((1, *(d or 8 for d in shape)), dtype) for shape, dtype in input_specs(model)
        ]
        with recording(model) as calls:
            outputs = model(inputs[0] if len(inputs) == 1 else inputs, training=False)
    except Exception:  # a model that cannot run on zeros: no head to name
        return []
    returned = {id(t) for t in keras.tree.flatten(outputs)}
    heads = [layer for layer, out in calls if returned & {id(t) for t in keras.tree.flatten(out)}]
    object.__setattr__(model, "_mpbench_heads", heads)
    return heads


def is_graph_model(model: keras.Model) -> bool:
    """Whether ``model`` is Sequential or Functional (it has a graph of layers); a subclassed
    model (its own ``call``) has none."""
    return isinstance(model, keras.Sequential) or _is_functional(model)


def input_specs(model: keras.Model) -> list[tuple[tuple[int | None, ...], str]]:
    """``(shape without the batch axis, dtype)`` of each input: the graph's, or a built
    subclassed model's build shapes (float32: a subclassed model does not say more)."""
    if _has_graph(model):
        return [(tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs]
    config = model.get_build_config() or {}
    shapes = config.get("input_shape")
    if shapes is None:
        raise LoadError(f"{model.name}: the model is not built; call model.build(shape)")
    if isinstance(shapes, dict):
        shapes = list(shapes.values())
    if not shapes or not isinstance(shapes[0], (list, tuple)):
        shapes = [shapes]
    return [(tuple(shape)[1:], "float32") for shape in shapes]


def output_shapes(model: keras.Model) -> list[tuple[int | None, ...]]:
    """Each output's shape without the batch axis (a subclassed model's from its output spec)."""
    if _has_graph(model):
        return [tuple(t.shape[1:]) for t in model.outputs]
    tensors = [keras.KerasTensor((None, *shape), dtype) for shape, dtype in input_specs(model)]
    try:
        spec = model.compute_output_spec(tensors[0] if len(tensors) == 1 else tensors)
    except Exception as error:  # the user's call() may raise anything
        raise LoadError(f"{model.name}: cannot infer its outputs ({first_line(error)})") from None
    return [tuple(t.shape[1:]) for t in keras.tree.flatten(spec)]


def _graph_outputs(model: keras.Model) -> list[Any]:
    try:
        return list(model.outputs or [])
    except (AttributeError, ValueError):
        return []


def convert(
    model: keras.Model,
    precision: str,
    compile: bool = True,
    remake: Callable[[], keras.Model] | None = None,
) -> keras.Model:
    """A copy of ``model`` that computes under ``precision``'s Keras policy, with the weights
    copied and float32 outputs: the layers that produce the outputs (and any layer the model
    already pins to float32 while computing in half) run in float32, so a final softmax or
    sigmoid is never computed in half precision. A compiled model's copy is compiled alike
    (under mixed_float16 Keras wraps its optimizer in a ``LossScaleOptimizer``).

    A Functional or Sequential model is cloned layer by layer. A subclassed model follows the
    global policy when it is built, so it is made again under the policy: by ``remake`` (its
    factory) or from its config, then built alike. What cannot be converted is one
    :class:`LoadError` line naming the layer or the class and why.
    """
    RunConfig(precision)  # an unknown precision is a ValueError here, before any work
    if not _has_graph(model) and model.built and not is_graph_model(model):
        return _remade(model, precision, compile, remake)
    if not is_graph_model(model):
        raise LoadError(
            f"{model.name}: a subclassed {type(model).__name__} that is not built cannot be "
            "converted; call it on a batch or model.build(shape) first"
        )
    if not _has_graph(model):
        raise LoadError(f"{model.name}: cannot convert a model that is not built")
    policy = KERAS_POLICY[RunConfig(precision).precision]
    pinned = _pinned(model)

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        try:
            if not isinstance(layer, keras.layers.Layer):
                # A keras.ops operation in the graph (``x + y``): it takes no dtype and
                # computes in its inputs' dtype.
                return layer.__class__.from_config(config)
            config["dtype"] = "float32" if id(layer) in pinned else policy
            # A Lambda's function comes from the user's own process, not from a file: Keras's
            # safe mode (which refuses to rebuild it from config) guards against files.
            with SafeModeScope(False):
                return layer.__class__.from_config(config)
        except Exception as error:
            raise LoadError(
                f"{model.name}: layer {layer.name} ({type(layer).__name__}) cannot be rebuilt "
                f"under {policy} from its config ({first_line(error)}); its get_config() must "
                "return its constructor's arguments"
            ) from None

    weights = model.get_weights()
    # applied() clears the Keras session (the original's variables live on) and sets the policy
    # every cloned layer without an explicit dtype would pick up; it restores the globals after.
    with applied(RunConfig(precision)):
        if isinstance(model, keras.Sequential):
            copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
        else:
            # New inputs with the original's dtypes and names (clone_model would make float ones
            # under the policy's variable dtype and rename them).
            inputs = keras.tree.pack_sequence_as(
                model.input,
                [
                    keras.Input(
                        batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name
                    )
                    for t in model.inputs
                ],
            )
            copy = keras.models.clone_model(
                model, input_tensors=inputs, clone_function=clone, recursive=True
            )
        copy.set_weights(weights)
        if compile and getattr(model, "compiled", False):
            _compile_like(copy, model, precision)
    return copy


def _pinned(model: keras.Model) -> set[int]:
    pinned = {id(layer) for layer in head_layers(model)}
    if model_precision(model) != "float32":
        pinned |= {
            id(layer)
            for layer in leaf_layers(model)
            if layer.weights and layer.compute_dtype == "float32"
        }
    return pinned


def _remade(
    model: keras.Model, precision: str, compile: bool, remake: Callable[[], keras.Model] | None
) -> keras.Model:
    """A subclassed ``model`` made again under ``precision``'s policy, weights copied, its head
    layers (and the layers it pins to float32) computing in float32."""
    name = type(model).__name__
    pinned_names = {layer.name for layer in leaf_layers(model) if id(layer) in _pinned(model)}
    weights = model.get_weights()
    with applied(RunConfig(precision)):
        if remake is not None:
            copy = remake()
        else:
            try:
                config = model.get_config()
                config.pop("dtype", None)  # the model's own policy: the global one
                copy = model.__class__.from_config(config)
                copy.build_from_config(model.get_build_config())
            except Exception as error:  # NotImplementedError from get_config, the user's code
                raise LoadError(
                    f"{model.name}: the subclassed {name} cannot be made again under "
                    f"{KERAS_POLICY[precision]} ({first_line(error)}); give it as a "
                    "package.module:factory, or give it a get_config()"
                ) from None
        for layer in leaf_layers(copy):
            if layer.name in pinned_names:
                # Its variables are float32 under any mixed policy: only the compute changes.
                layer.dtype_policy = "float32"
        try:
            copy.set_weights(weights)
        except ValueError as error:
            raise LoadError(
                f"{model.name}: the {name} made again under {KERAS_POLICY[precision]} does not "
                f"take the original's weights ({first_line(error)})"
            ) from None
        if compile and getattr(model, "compiled", False):
            _compile_like(copy, model, precision)
    object.__setattr__(copy, "_mpbench_heads", None)
    return copy


def _is_functional(model: keras.Model) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, Functional) and type(model).call is Functional.call


def _compile_like(copy: keras.Model, model: keras.Model, precision: str) -> None:
    optimizer = model.optimizer
    # A user's own LossScaleOptimizer settings (initial_scale=16, say) carry over to the clone.
    scaling: dict[str, Any] = {}
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scaling = {
            "initial_scale": optimizer.initial_scale,
            "dynamic_growth_steps": optimizer.dynamic_growth_steps,
        }
        optimizer = optimizer.inner_optimizer
    fresh = optimizer.__class__.from_config(optimizer.get_config())
    if precision in ("mixed_float16", "amp_rewrite"):
        fresh = keras.optimizers.LossScaleOptimizer(fresh, **scaling)
    copy.compile(
        optimizer=fresh,
        loss=model.loss,
        loss_weights=getattr(model, "loss_weights", None),
        jit_compile=bool(getattr(model, "jit_compile", False)),
    )


def compute_dtype_of(model: keras.Model) -> str:
    """The half dtype a model computes in, or ``float32``."""
    precision = model_precision(model)
    return precision.removeprefix("mixed_") if precision != "float32" else "float32"


def float32_clone(
    model: keras.Model, remake: Callable[[], keras.Model] | None = None
) -> keras.Model:
    """``model`` itself if it computes in float32, else a float32 copy (weights copied)."""
    if model_precision(model) == "float32":
        return model
    return convert(model, "float32", False, remake=remake)
