"""A user's loss and one batch of their data, for checks and benchmarks of their model.

Data specs: a folder in the seed layout (:mod:`mpcore.data.ships`), an ``.npz`` with ``x`` and
``y``, ``package.module:fn`` returning ``(x, y)`` or a ``tf.data.Dataset``, or None for a seeded
random batch shaped by the model's inputs, with labels shaped by its outputs and drawn to suit the
loss. Every problem is one :class:`mpcore.user.loader.LoadError` naming the spec or file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from mpcore.probe import backend
from mpcore.probe.backend import tf
from mpcore.user.loader import (
    LoadError,
    accepted_keywords,
    first_line,
    head_layers,
    is_python_spec,
    leaf_layers,
    resolve_attribute,
    users_code,
)


def resolve_loss(model: keras.Model, name: str | None) -> tuple[Any, str]:
    """The loss to check with and how it was chosen: ``name``, else the compiled loss, else one
    suited to the head (softmax: sparse cross-entropy, sigmoid: binary, otherwise MSE)."""
    if name:
        try:
            return keras.losses.get(name), name
        except (ValueError, TypeError):
            raise LoadError(f"--loss {name}: not a Keras loss name") from None
    compiled = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    if compiled is not None and not isinstance(compiled, (dict, list, tuple)):
        label = compiled if isinstance(compiled, str) else getattr(compiled, "name", None)
        return keras.losses.get(compiled), f"compiled: {label or type(compiled).__name__}"
    activation = _final_activation(model)
    chosen = {
        "softmax": "sparse_categorical_crossentropy",
        "sigmoid": "binary_crossentropy",
    }.get(activation or "", "mean_squared_error")
    return keras.losses.get(chosen), f"{chosen} (chosen for a {activation or 'linear'} head)"


def _final_activation(model: keras.Model) -> str | None:
    heads = head_layers(model)
    if len(heads) != 1:
        return None
    head = heads[0]
    if isinstance(head, keras.layers.Softmax):
        return "softmax"
    activation = getattr(head, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


def loss_function(loss: Any) -> Callable[[Any, Any], tf.Tensor]:
    """``loss`` as ``fn(labels, predictions)`` returning a float32 scalar, whatever the
    prediction dtype; several outputs add up."""
    fn = keras.losses.get(loss)

    def total(labels: Any, predictions: Any) -> tf.Tensor:
        pairs = zip(keras.tree.flatten(labels), keras.tree.flatten(predictions), strict=True)
        values = [keras.ops.mean(fn(y, keras.ops.cast(p, "float32"))) for y, p in pairs]
        return keras.ops.sum(keras.ops.stack(values))

    return total


def _input_shapes(model: keras.Model) -> list[tuple[int | None, ...]]:
    return [tuple(tensor.shape[1:]) for tensor in model.inputs]


def random_batch(model: keras.Model, batch_size: int, loss_name: str, seed: int = 0) -> tuple:
    """A seeded batch shaped by the model: standard-normal float inputs (integer inputs in
    ``[0, n)`` with ``n`` the smallest Embedding vocabulary, else 2), labels drawn to fit the loss
    and the output shape (class indices, one-hot, 0/1 or standard normal)."""
    rng = np.random.default_rng(seed)
    vocabulary = [
        int(layer.input_dim)
        for layer in leaf_layers(model)
        if isinstance(layer, keras.layers.Embedding)
    ]
    inputs = []
    for tensor in model.inputs:
        shape = (batch_size, *(d if d is not None else 8 for d in tensor.shape[1:]))
        if "int" in str(tensor.dtype):
            inputs.append(rng.integers(0, min(vocabulary, default=2), shape).astype(tensor.dtype))
        else:
            inputs.append(rng.standard_normal(shape).astype(np.float32))
    labels = [_labels(rng, tuple(out.shape), batch_size, loss_name) for out in model.outputs]
    return (inputs[0] if len(inputs) == 1 else inputs), (labels[0] if len(labels) == 1 else labels)


def _labels(rng: np.random.Generator, shape: tuple, batch_size: int, loss_name: str) -> Any:
    shape = (batch_size, *(d if d is not None else 8 for d in shape[1:]))
    classes = shape[-1] if len(shape) > 1 else 1
    if "sparse" in loss_name:
        return rng.integers(0, max(classes, 2), shape[:-1]).astype(np.int32)
    if "categorical" in loss_name:
        return np.eye(classes, dtype=np.float32)[rng.integers(0, classes, shape[:-1])]
    if "binary" in loss_name or "hinge" in loss_name:
        return rng.integers(0, 2, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def load_batch(
    spec: str | os.PathLike[str] | None,
    model: keras.Model,
    batch_size: int,
    loss_name: str,
    seed: int = 0,
) -> tuple[Any, Any]:
    """One ``(x, y)`` batch of at most ``batch_size`` samples from ``spec`` (see the module
    docstring), checked against the model's input shapes."""
    if spec is None:
        return random_batch(model, batch_size, loss_name, seed)
    text = os.fspath(spec)
    if is_python_spec(text):
        x, y = _from_function(text, batch_size)
    elif Path(text).is_dir():
        x, y = _from_seed_layout(Path(text), model, batch_size, seed)
    elif Path(text).suffix == ".npz":
        x, y = _from_npz(Path(text))
    elif not Path(text).exists():
        raise LoadError(f"{text}: data not found")
    else:
        raise LoadError(f"{text}: data must be a seed-layout folder, an .npz or module:function")
    x, y = keras.tree.map_structure(lambda a: np.asarray(a)[:batch_size], (x, y))
    _check_shapes(text, model, x, y)
    return x, y


def _from_function(spec: str, batch_size: int) -> tuple[Any, Any]:
    function = resolve_attribute(spec)
    if not callable(function):
        raise LoadError(f"{spec}: is a {type(function).__name__}, not a function")
    try:
        with users_code(spec, "loading data"):
            result = function(**accepted_keywords(function, {"batch_size": batch_size}))
    except LoadError:
        raise
    except Exception as error:  # the user's function may raise anything
        raise LoadError(f"{spec}: raised {first_line(error)}") from None
    if isinstance(result, tf.data.Dataset):
        try:
            element = next(iter(result.take(1)))
        except (StopIteration, tf.errors.OpError) as error:
            raise LoadError(f"{spec}: the dataset yields nothing ({first_line(error)})") from None
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            raise LoadError(f"{spec}: the dataset's elements are not (x, y) pairs")
        return keras.tree.map_structure(np.asarray, (element[0], element[1]))
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return result[0], result[1]
    raise LoadError(f"{spec}: returned a {type(result).__name__}, not (x, y) or a tf.data.Dataset")


def _from_npz(path: Path) -> tuple[Any, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise LoadError(f"{path}: no array {' or '.join(missing)} (has {archive.files})")
            return archive["x"], archive["y"]
    except (OSError, ValueError) as error:
        if isinstance(error, LoadError):
            raise
        raise LoadError(f"{path}: not a readable .npz ({first_line(error)})") from None


def _from_seed_layout(root: Path, model: keras.Model, batch_size: int, seed: int) -> tuple:
    from mpcore.data.ships import DataError, make_dataset, read_ship_index

    shapes = _input_shapes(model)
    if len(shapes) != 1 or len(shapes[0]) != 3 or shapes[0][0] != shapes[0][1] or shapes[0][2] != 3:
        raise LoadError(
            f"{root}: ship images need one square RGB image input; the model takes {shapes}"
        )
    try:
        index = read_ship_index(root)
    except DataError as error:
        raise LoadError(str(error)) from None
    # Pixels scaled to 0..1: a user model's own preprocessing belongs inside the model.
    size = shapes[0][0] or 224
    if not backend.is_tensorflow():
        # The backend-neutral path's decode, on the first batch of the same order only.
        from mpcore.data.arrays import EpochOrder, decode_resized

        first = EpochOrder(len(index), seed).order(0)[:batch_size]
        x = np.stack([decode_resized(index.paths[i], size) for i in first]).astype(np.float32)
        return x / np.float32(255.0), np.asarray(index.labels, dtype=np.int32)[first]
    dataset = make_dataset(index, size, batch_size, lambda images: images / 255.0, seed=seed)
    try:
        x, y = next(iter(dataset))
    except tf.errors.OpError as error:  # an image in the batch the decoder cannot read
        from mpcore.data.ships import describe_bad_images, find_bad_images

        bad = find_bad_images(index)
        what = describe_bad_images(bad) if bad else first_line(error)
        raise LoadError(f"{root}: {what}; remove or replace them") from None
    return x.numpy(), y.numpy()


def _check_shapes(source: str, model: keras.Model, x: Any, y: Any) -> None:
    arrays = keras.tree.flatten(x)
    expected = _input_shapes(model)
    if len(arrays) != len(expected):
        raise LoadError(f"{source}: {len(arrays)} input array(s); the model takes {len(expected)}")
    for array, shape in zip(arrays, expected, strict=True):
        got = tuple(array.shape[1:])
        fits = len(got) == len(shape) and all(
            e in (None, g) for g, e in zip(got, shape, strict=True)
        )
        if not fits:
            raise LoadError(
                f"{source}: samples of shape {got} do not fit the model's input "
                f"{tuple('?' if d is None else d for d in shape)}"
            )
    sizes = {np.shape(a)[0] for a in arrays + keras.tree.flatten(y)}
    if len(sizes) != 1 or 0 in sizes:
        raise LoadError(f"{source}: x and y hold different or zero numbers of samples {sizes}")
