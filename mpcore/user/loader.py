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

import contextlib
import dataclasses
import importlib
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from mpcore.precision.modes import KERAS_POLICY, RunConfig, applied

#: ``package.module:attribute`` (the attribute may be dotted, e.g. ``Class.method``).
_SPEC = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
HALF_DTYPES: frozenset[str] = frozenset({"float16", "bfloat16"})


class LoadError(ValueError):
    """A model or data spec that cannot be used; the message is one line naming it."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def is_python_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``package.module:attribute`` rather than a path."""
    return bool(_SPEC.match(spec)) and not Path(spec).exists()


def resolve_attribute(spec: str) -> Any:
    """Import ``package.module`` and return its (possibly dotted) attribute."""
    match = _SPEC.match(spec)
    if not match:
        raise LoadError(f"{spec}: not a package.module:attribute spec")
    module_name, attribute = match.groups()
    try:
        with users_code(spec, f"importing {module_name}"):
            target: Any = importlib.import_module(module_name)
    except LoadError:
        raise
    except Exception as error:  # anything the user's module raises while importing
        raise LoadError(f"{spec}: cannot import {module_name} ({first_line(error)})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LoadError(f"{spec}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target


@contextlib.contextmanager
def users_code(spec: str, doing: str) -> Any:
    """Run the user's code (a module import, a factory, a data function): what it prints goes to
    stderr (a ``--json`` report on stdout stays JSON), and a ``sys.exit()`` in it is a
    :class:`LoadError` naming ``spec`` instead of ending the command with no message."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except SystemExit as stop:
        raise LoadError(
            f"{spec}: called sys.exit({stop.code!r}) while {doing}; a factory must return a model"
        ) from None


def accepted_keywords(function: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins and C callables have no signature
        return {}
    return {name: value for name, value in offered.items() if name in parameters}


@dataclasses.dataclass
class LoadedModel:
    """A user's model and where it came from (``source`` is what the user wrote)."""

    model: keras.Model
    source: str
    kind: str  # "file", "factory" or "object"

    @property
    def precision(self) -> str:
        return model_precision(self.model)

    def build(self, precision: str) -> keras.Model:
        """The model as it runs under ``precision``: itself if it already does, else
        :func:`convert`'s clone."""
        return (
            self.model
            if self.precision == KERAS_POLICY[precision]
            else convert(self.model, precision)
        )


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
    try:
        with users_code(spec, "building the model"):
            model = target(**keywords)
    except LoadError:
        raise
    except Exception as error:  # the user's factory may raise anything
        raise LoadError(f"{spec}: the factory raised {first_line(error)}") from None
    if not isinstance(model, keras.Model):
        raise LoadError(f"{spec}: returned a {type(model).__name__}, not a Keras model")
    return LoadedModel(_ensure_built(model, spec, input_shape), spec, "factory")


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
    """The layers that produce the model's outputs (inside nested models, their last layers)."""
    heads: list[keras.layers.Layer] = []
    for output in _graph_outputs(model):
        layer = output._keras_history.operation
        heads.extend(head_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return list(dict.fromkeys(heads))


def _graph_outputs(model: keras.Model) -> list[Any]:
    try:
        return list(model.outputs or [])
    except (AttributeError, ValueError):
        return []


def convert(model: keras.Model, precision: str, compile: bool = True) -> keras.Model:
    """A clone of a Functional or Sequential ``model`` that computes under ``precision``'s Keras
    policy, with the weights copied and float32 outputs: the layers that produce the outputs
    (and any layer the model already pins to float32 while computing in half) run in float32, so
    a final softmax or sigmoid is never computed in half precision. A compiled model's clone is
    compiled alike (under mixed_float16 Keras wraps its optimizer in a ``LossScaleOptimizer``).
    """
    policy = KERAS_POLICY[RunConfig(precision).precision]
    if not isinstance(model, keras.Sequential) and not _is_functional(model):
        raise LoadError(
            f"{model.name}: convert() clones Functional and Sequential models; build the "
            f"subclassed {type(model).__name__} under the dtype policy instead"
        )
    if not _has_graph(model):
        raise LoadError(f"{model.name}: cannot convert a model that is not built")
    pinned = {id(layer) for layer in head_layers(model)}
    if model_precision(model) != "float32":
        pinned |= {
            id(layer)
            for layer in leaf_layers(model)
            if layer.weights and layer.compute_dtype == "float32"
        }

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = "float32" if id(layer) in pinned else policy
        return layer.__class__.from_config(config)

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


def float32_clone(model: keras.Model) -> keras.Model:
    """``model`` itself if it computes in float32, else a float32 clone (weights copied)."""
    return model if model_precision(model) == "float32" else convert(model, "float32", False)
