"""``mpbench run --model SPEC`` for a user's model: its settings and array data, checked in the
parent before any worker starts, each problem one :class:`~mpcore.face.common.UsageError` line
naming the spec.

An image model (one square RGB input) trains on the ship set (``--data DIR`` or the generated
set) and must output the set's 5 classes (a factory taking ``num_classes`` is given 5, and
``image_size`` the run's size); any model trains on ``--data`` arrays: an ``.npz`` with ``x`` and
``y`` or ``package.module:fn`` returning ``(x, y)``. Each worker loads the model again from its
spec (``settings.model``) and converts it under its precision mode.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpcore.face.common import UsageError, check_batch_in_split, train_settings
from mpcore.names import VALIDATION_FRACTION

if TYPE_CHECKING:
    from mpcore.train.settings import TrainSettings


def is_user_model(name: str | None) -> bool:
    from mpcore.user.ownmodel import is_user_model as user

    return bool(name) and user(name)


def user_settings(args: argparse.Namespace, profile: Any) -> TrainSettings:
    """The run's settings for ``--model SPEC``, the rest from the ``profile`` (whose image size
    is offered to a factory taking one); the model is loaded once here to check it against the
    data."""
    from mpcore.data.ships import NUM_CLASSES
    from mpcore.names import DEFAULT_PRECISIONS, PRECISIONS, parse_names
    from mpcore.user.data import check_class_labels
    from mpcore.user.loader import LoadError
    from mpcore.user.ownmodel import (
        conversion_problem,
        image_side,
        input_specs,
        is_array_data,
        load_float32,
        output_classes,
        user_loss,
    )

    spec = args.model
    if args.weights:
        raise UsageError(f"--weights: {spec} is a user's model; it brings its own weights")
    if (args.strategy or "none") != "none" or args.workers:
        raise UsageError(f"--model {spec}: a user's model runs without --strategy and --workers")
    arrays = is_array_data(args.data)
    try:
        loaded = load_float32(spec, None if arrays else args.image_size or profile.image_size)
    except LoadError as error:
        raise UsageError(str(error)) from None
    model = loaded.model
    # Every mode's copy is made now: a model that cannot be converted is refused before float32
    # has trained, not after.
    precisions = parse_names(args.precision, PRECISIONS, "--precision") or DEFAULT_PRECISIONS
    problem = conversion_problem(loaded, precisions)
    if problem:
        raise UsageError(problem)
    side = None
    if not arrays:
        side = image_side(model)
        if side is None:
            shapes = [shape for shape, _ in input_specs(model)]
            raise UsageError(
                f"{spec}: takes {shapes}, not one square RGB image; give --data as an .npz with "
                "x and y or as package.module:fn returning (x, y)"
            )
        if args.image_size and side != args.image_size:
            raise UsageError(f"--image-size {args.image_size}: {spec} takes {side} px images")
        classes = output_classes(model)
        if classes != NUM_CLASSES:
            raise UsageError(
                f"{spec}: outputs {classes} values per sample; the ship set has {NUM_CLASSES} "
                "classes (a factory taking num_classes is given it)"
            )
        try:
            check_class_labels(model, user_loss(model, class_labels=True)[0])
        except LoadError as error:
            raise UsageError(str(error)) from None
    return train_settings(args, profile, model=spec, image_size=side)


def array_data(args: argparse.Namespace, settings: TrainSettings) -> tuple[Any, dict[str, Any]]:
    """``--data`` arrays for a user's model: the root the workers load them from (the resolved
    ``.npz`` path, or the ``module:fn`` spec) and their description for ``results.json``."""
    from mpcore.user.loader import LoadError
    from mpcore.user.ownmodel import array_splits, load_float32

    if not is_user_model(settings.model):
        raise UsageError(f"--data {args.data}: arrays are for a user's --model; ship images only")
    spec = args.data
    root: Any = Path(spec).resolve() if spec.endswith(".npz") else spec
    try:
        model = load_float32(settings.model).model
        train, validation = array_splits(str(root), model, VALIDATION_FRACTION, args.seed)
    except LoadError as error:
        raise UsageError(str(error)) from None
    check_batch_in_split(
        settings.batch_size, len(train), len(train) + len(validation), unit="samples"
    )
    return root, {
        "root": str(root),
        "synthetic": False,
        "images": len(train) + len(validation),
        "train_images": len(train),
        "validation_images": len(validation),
        "class_counts": train.class_counts(),
        "skipped_images": [],
    }
