"""``mpbench check --steps N``: train a copy of the model N real steps before judging it.

The loss-scale window judged at initialisation can be far from the one training meets: gradients
grow as the weights move, and a dynamic loss scale that looked safe on the first batch can
collapse within the first epoch. :func:`train_steps` runs N training steps of the half-precision
model on the check's batch with its optimizer (the user's compiled one, a ``LossScaleOptimizer``
for float16 included, else Adam) and records the loss scale and the skipped (non-finite) steps;
the checks that follow then run on the trained weights at the scale training reached.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from mpcore.check.audit import Finding
from mpcore.probe.backend import tf
from mpcore.train.fit import current_loss_scale

#: A loss scale that falls by this power of two or more during the steps has collapsed (the rule
#: ``mpbench run`` flags in its table too), as has one at or below 1.
COLLAPSE_FALL_EXPONENT = 10


@dataclasses.dataclass
class Training:
    """What :func:`train_steps` did: the steps, the optimizer, the loss after each step, the
    loss scale before the first step and after each (None: no dynamic loss scaling), and the
    steps whose gradients were not finite (the update skipped)."""

    steps: int
    optimizer: str
    losses: list[float]
    loss_scales: list[float] | None
    skipped_steps: int

    #: Why the loss scale collapsed during the steps, in words (None: it did not).
    collapse: str | None = None

    def __post_init__(self) -> None:
        if self.collapse is None:
            self.collapse = _collapse(self.loss_scales)


def _collapse(loss_scales: list[float] | None) -> str | None:
    if not loss_scales:
        return None
    first, lowest = loss_scales[0], min(loss_scales)
    if lowest <= 1.0:
        return f"the loss scale fell to {lowest:g} (at or below 1)"
    if math.log2(first / lowest) >= COLLAPSE_FALL_EXPONENT:
        return (
            f"the loss scale fell by 2^{math.log2(first / lowest):.0f} from {first:g} to "
            f"{lowest:g} (2^{COLLAPSE_FALL_EXPONENT} or more)"
        )
    return None


def training_optimizer(model: keras.Model, dtype: str) -> tuple[Any, str]:
    """The optimizer for the steps and how it was chosen: the model's compiled one, else Adam
    (wrapped in a ``LossScaleOptimizer`` for float16, as Keras's ``compile`` would)."""
    if getattr(model, "compiled", False) and getattr(model, "optimizer", None) is not None:
        # A fresh one from its config: the user's optimizer (and its state) is left untouched.
        compiled = model.optimizer
        return compiled.__class__.from_config(compiled.get_config()), (
            f"a fresh copy of the compiled {type(compiled).__name__}"
        )
    optimizer = keras.optimizers.Adam()
    if dtype == "float16":
        return keras.optimizers.LossScaleOptimizer(optimizer), "Adam in a LossScaleOptimizer"
    return optimizer, "Adam"


def _scale(optimizer: Any) -> float | None:
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return None
    return current_loss_scale(optimizer) or float(optimizer.initial_scale)


def _iterations(optimizer: Any) -> int:
    return int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer.built else 0


def train_steps(
    model: keras.Model, batch: tuple[Any, Any], loss_fn: Any, dtype: str, steps: int
) -> tuple[Any, Training]:
    """Train ``model`` (a copy the caller owns) ``steps`` steps on ``batch`` and return its
    optimizer and the :class:`Training` record."""
    optimizer, label = training_optimizer(model, dtype)
    x, y = batch
    variables = list(model.trainable_variables)
    scales = [_scale(optimizer)]
    losses: list[float] = []
    skipped = 0
    for _ in range(steps):
        before = _iterations(optimizer)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        optimizer.apply(gradients, variables)
        # A LossScaleOptimizer skips the update of a non-finite step (the inner optimizer's
        # iterations stand still); a plain optimizer applies it, so count those by hand.
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            skipped += int(_iterations(optimizer) == before)
        else:
            finite = all(
                g is None or bool(np.isfinite(np.asarray(tf.convert_to_tensor(g))).all())
                for g in gradients
            )
            skipped += int(not finite)
        losses.append(float(loss))
        scales.append(_scale(optimizer))
    loss_scales = None if scales[0] is None else [float(s) for s in scales]
    return optimizer, Training(steps, label, losses, loss_scales, skipped)


def training_findings(training: Training) -> list[Finding]:
    """A collapse of the loss scale during the steps is an error; skipped steps without one
    are how dynamic scaling adjusts (info)."""
    collapse = training.collapse
    skipped = f"{training.skipped_steps} of {training.steps} steps skipped (non-finite gradients)"
    if collapse:
        return [
            Finding(
                "error",
                "loss_scale_collapse",
                None,
                f"in {training.steps} training steps {collapse}; {skipped}",
                "find where the gradients overflow (the first inf/NaN, the layers' own error), "
                "lower the learning rate, or use mixed_bfloat16",
            )
        ]
    if training.skipped_steps:
        return [
            Finding(
                "info",
                "skipped_steps",
                None,
                f"{skipped} while the dynamic loss scale adjusted",
                "none needed: dynamic loss scaling halves the scale on such a step",
            )
        ]
    return []
