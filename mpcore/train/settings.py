"""What determines a training run besides the mode: :class:`TrainSettings` and TensorFlow op
determinism.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from mpcore.models.registry import model_spec
from mpcore.probe.backend import tf
from mpcore.probe.capability import capability
from mpcore.train.target import parse_target
from mpcore.user.ownmodel import (
    is_user_model,
)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything besides precision and XLA that determines a training run."""

    #: A registry name, or a user's ``.keras`` file or ``package.module:factory``.
    model: str = "small"
    #: None: the registry model's default; for a user's model, None means not an image model.
    image_size: int | None = None
    batch_size: int = 32
    epochs: int = 5
    learning_rate: float = 1e-3
    seed: int = 0
    weights: str | None = None
    float16_input: bool = False
    cache: bool = True
    #: TensorFlow op determinism; None means on where no GPU is visible (free on a CPU, while on
    #: a GPU it costs speed and some ops have no deterministic kernel); a simulated GPU counts.
    deterministic: bool | None = None
    #: ``--target`` (e.g. ``val_accuracy>=0.9``): train until reached, ``epochs`` at most.
    target: str | None = None
    #: The weights' initialisation and the shuffle order; None: ``seed``. Under ``--target`` each
    #: repeat trains with ``seed + repeat`` here, while ``seed`` keeps one data split for all.
    init_seed: int | None = None

    def __post_init__(self) -> None:
        if not is_user_model(self.model):
            model_spec(self.model)
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}"
                )
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image size must be positive, got {self.image_size}")
        if self.target is not None:
            parse_target(self.target)  # one line naming the problem, before anything trains

    @property
    def resolved_image_size(self) -> int:
        if is_user_model(self.model):
            return self.image_size  # type: ignore[return-value]  # None: not an image model
        return self.image_size or model_spec(self.model).default_image_size

    @property
    def resolved_init_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    @property
    def resolved_deterministic(self) -> bool:
        if self.deterministic is None:
            return capability().deterministic_default
        return self.deterministic

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "image_size": self.resolved_image_size,
            "deterministic": self.resolved_deterministic,
            "init_seed": self.resolved_init_seed,
        }


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """Enable TensorFlow op determinism inside the block and switch it back off after.

    On JAX and torch the block changes nothing: XLA's CPU kernels are deterministic, and its GPU
    switch (``XLA_FLAGS=--xla_gpu_deterministic_ops=true``) must be set before the process starts.
    """
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        yield
        return
    from tensorflow.python.framework import config as tf_config  # the only switch-off

    was_enabled = tf_config.is_op_determinism_enabled()
    if enabled and not was_enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was_enabled:
            tf_config.disable_op_determinism()
