"""Which model the benchmark plugin (:mod:`mpcore.bench.plugin`) times, and its sizes: a
registry model's image side, or a user's model's own, checked before any benchmark runs."""

from __future__ import annotations

import pytest

from mpcore.models.registry import model_spec
from mpcore.names import PRECISIONS, parse_names


def names(raw: str, valid: tuple[str, ...], option: str) -> tuple[str, ...]:
    """Comma-separated names, parsed as ``mpbench run`` parses its own (one vocabulary)."""
    try:
        return tuple(parse_names([raw], valid, option))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def user_model(
    config: pytest.Config, model: str, default_size: int | None
) -> tuple[int | None, int, bool]:
    """A user's model's image side (None: not an image model), output width and whether float8
    has layers to quantize, from the model itself (a factory taking ``image_size`` is offered
    ``--mp-image-size``, else the device's default size: the CPU's small one, none on a GPU).
    A model that cannot be converted under a precision asked for is refused here, before any
    benchmark runs."""
    from mpcore.user import ownmodel
    from mpcore.user.loader import LoadError

    try:
        loaded = ownmodel.load_float32(model, config.getoption("mp_image_size") or default_size)
        raw = config.getoption("mp_precision")
        precisions = names(raw, PRECISIONS, "--mp-precision") if raw else PRECISIONS
        problem = ownmodel.conversion_problem(loaded, precisions, float8_needs_layers=False)
    except LoadError as error:
        raise pytest.UsageError(f"--mp-model: {error}") from None
    if problem:
        raise pytest.UsageError(f"--mp-model: {problem}")
    side, classes = ownmodel.image_side(loaded.model), ownmodel.output_classes(loaded.model)
    return side, classes or 1, ownmodel.has_float8_layers(loaded.model)


def registry_size(config: pytest.Config, model: str, defaults: dict) -> int:
    try:
        spec = model_spec(model)
    except ValueError as error:
        raise pytest.UsageError(f"--mp-model: {error}") from None
    image_size = config.getoption("mp_image_size")
    if image_size is None:
        image_size = defaults["image_size"] or spec.default_image_size
    if image_size < spec.min_image_size:
        raise pytest.UsageError(
            f"--mp-image-size {image_size} is too small for {model} (minimum {spec.min_image_size})"
        )
    return image_size
