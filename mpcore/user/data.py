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
    input_specs,
    is_graph_model,
    is_python_spec,
    leaf_layers,
    output_shapes,
    resolve_attribute,
    users_code,
)


def resolve_loss(
    model: keras.Model, name: str | None, class_labels: bool = False
) -> tuple[Any, str]:
    """The loss to check or train with and how it was chosen: ``name``, else the compiled loss
    (one per output if compiled so), else one per output suited to its head (softmax: sparse
    cross-entropy, sigmoid: binary, linear: MSE). Several outputs give losses structured like
    the outputs (a list, or a dict for dict outputs).

    ``class_labels``: the labels will be class indices (the ship set): a linear head is read
    as logits (sparse cross-entropy ``from_logits``).
    """
    if name:
        try:
            return keras.losses.get(name), name
        except (ValueError, TypeError):
            raise LoadError(f"--loss {name}: not a Keras loss name") from None
    compiled = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    if compiled is not None:
        try:
            loss = keras.tree.map_structure(keras.losses.get, compiled)
        except (ValueError, TypeError) as error:
            raise LoadError(
                f"{model.name}: its compiled loss is unusable ({first_line(error)})"
            ) from None
        label = f"compiled: {', '.join(loss_names(loss))}"
    else:
        chosen = []
        for activation in _output_activations(model):
            if activation == "softmax":
                chosen.append(keras.losses.SparseCategoricalCrossentropy())
            elif activation == "sigmoid":
                chosen.append(keras.losses.BinaryCrossentropy())
            elif class_labels:
                chosen.append(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            else:
                chosen.append(keras.losses.MeanSquaredError())
        heads = ", ".join(a or "linear" for a in _output_activations(model))
        loss = _like_outputs(model, chosen)
        label = f"{', '.join(loss_names(loss))} (chosen for a {heads} head)"
    return loss, label


def check_class_labels(model: keras.Model, loss: Any) -> None:
    """Refuse (:class:`LoadError`) a loss that cannot take class indices (the ship set's)."""
    wrong = [name for name in loss_names(loss) if not name.startswith("sparse_categorical")]
    if wrong:
        raise LoadError(
            f"{model.name}: its loss {', '.join(wrong)} does not take the ship set's class "
            "indices; give --data arrays with labels that fit it"
        )


def loss_names(loss: Any) -> list[str]:
    """The name of each loss in ``loss`` (one, or a structure of them), ``from_logits`` noted."""
    names = []
    for item in keras.tree.flatten(loss):
        if isinstance(item, str):
            names.append(item)
            continue
        name = getattr(item, "name", None) or getattr(item, "__name__", type(item).__name__)
        logits = getattr(item, "from_logits", None)
        if logits is None:
            logits = (getattr(item, "_fn_kwargs", None) or {}).get("from_logits")
        names.append(f"{name} (from_logits)" if logits else name)
    return names


def _like_outputs(model: keras.Model, losses: list[Any]) -> Any:
    if len(losses) == 1:
        return losses[0]
    structure = getattr(model, "output", None) if is_graph_model(model) else None
    return keras.tree.pack_sequence_as(structure, losses) if structure is not None else losses


def _output_activations(model: keras.Model) -> list[str | None]:
    """The final activation of each output (None: linear or unknown)."""
    heads = head_layers(model)
    count = max(len(output_shapes(model)), 1)
    if len(heads) != count:
        return [None] * count
    return [_activation(head) for head in heads]


def _activation(head: keras.layers.Layer) -> str | None:
    if isinstance(head, keras.layers.Softmax):
        return "softmax"
    activation = getattr(head, "activation", None)
    name = getattr(activation, "__name__", None) if activation is not None else None
    return None if name == "linear" else name


def loss_function(loss: Any) -> Callable[[Any, Any], tf.Tensor]:
    """``loss`` (one, or one per output) as ``fn(labels, predictions)`` returning a float32
    scalar, whatever the prediction dtype; several outputs add up."""
    functions = [keras.losses.get(item) for item in keras.tree.flatten(loss)]

    def total(labels: Any, predictions: Any) -> tf.Tensor:
        pairs = list(zip(keras.tree.flatten(labels), keras.tree.flatten(predictions), strict=True))
        fns = functions if len(functions) == len(pairs) else functions[:1] * len(pairs)
        values = [
            keras.ops.mean(fn(y, keras.ops.cast(p, "float32")))
            for fn, (y, p) in zip(fns, pairs, strict=True)
        ]
        return keras.ops.sum(keras.ops.stack(values))

    return total


def _input_shapes(model: keras.Model) -> list[tuple[int | None, ...]]:
    return [shape for shape, _ in input_specs(model)]


#: The size given to an axis a model leaves unknown (a fully convolutional model's image side)
#: when nothing else says it.
UNKNOWN_SIZE = 8


def random_batch(
    model: keras.Model, batch_size: int, loss: Any, seed: int = 0, unknown_size: int | None = None
) -> tuple:
    """A seeded batch shaped by the model: standard-normal float inputs (integer inputs in
    ``[0, n)`` with ``n`` the smallest Embedding vocabulary, else 2), labels drawn to fit the loss
    (a name, a loss, or one per output) and the output shape (class indices, one-hot, 0/1 or
    standard normal), structured like the outputs. An axis of unknown size gets
    ``unknown_size`` (default :data:`UNKNOWN_SIZE`)."""
    fill = unknown_size or UNKNOWN_SIZE
    rng = np.random.default_rng(seed)
    vocabulary = [
        int(layer.input_dim)
        for layer in leaf_layers(model)
        if isinstance(layer, keras.layers.Embedding)
    ]
    inputs = []
    for input_shape, dtype in input_specs(model):
        shape = (batch_size, *(d if d is not None else fill for d in input_shape))
        if "int" in dtype:
            inputs.append(rng.integers(0, min(vocabulary, default=2), shape).astype(dtype))
        else:
            inputs.append(rng.standard_normal(shape).astype(np.float32))
    shapes = output_shapes(model)
    names = loss_names(loss)
    names = names if len(names) == len(shapes) else names[:1] * len(shapes)
    labels = [
        _labels(rng, (None, *shape), batch_size, name)
        for shape, name in zip(shapes, names, strict=True)
    ]
    return (inputs[0] if len(inputs) == 1 else inputs), _like_outputs(model, labels)


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
    loss: Any,
    seed: int = 0,
    unknown_size: int | None = None,
) -> tuple[Any, Any]:
    """One ``(x, y)`` batch of at most ``batch_size`` samples from ``spec`` (see the module
    docstring), checked against the model's input shapes."""
    if spec is None:
        return random_batch(model, batch_size, loss, seed, unknown_size)
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
