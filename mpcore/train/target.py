"""Time to a target quality: ``--target val_accuracy=0.9`` parsed, ``fit`` stopped when reached.

A faster step that needs more epochs can be slower to a useful model, which is why MLPerf
Training scores the time to a target quality rather than throughput. :func:`target_recorder`
watches one logged metric at the end of every epoch (after validation, so evaluation is on the
clock) and stops training when it reaches the target.

The clock starts at the end of the first training step: that step carries tracing and XLA
compilation, which are reported separately as ``compile_seconds`` (they are paid once per process,
not per epoch, and their share depends on how long the run is). Everything after it - training,
validation, callbacks - counts, as it does for a user waiting on ``fit``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

#: Metrics that live in [0, 1]: a target outside that range can never be reached.
BOUNDED_METRICS = ("accuracy", "auc", "precision", "recall")

_TARGET = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|=)\s*(\S+)\s*$")


@dataclasses.dataclass(frozen=True)
class Target:
    """A logged metric, a direction (``>=`` or ``<=``) and the value to reach."""

    metric: str
    direction: str
    value: float

    def reached(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value >= self.value if self.direction == ">=" else value <= self.value

    def text(self) -> str:
        return f"{self.metric}{self.direction}{self.value:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "direction": self.direction, "value": self.value}


def _lower_is_better(metric: str) -> bool:
    return "loss" in metric or "error" in metric


def parse_target(text: str) -> Target:
    """``NAME=VALUE`` (the direction follows the metric: at most for losses and errors, at
    least otherwise), or an explicit ``NAME>=VALUE`` / ``NAME<=VALUE``.

    Raises ValueError with one line naming what was received when the text does not parse or the
    target can never be reached (an accuracy above 1, a negative loss)."""
    match = _TARGET.match(text or "")
    if match is None:
        raise ValueError(f"--target must look like val_accuracy=0.9 or val_loss<=0.3, got {text!r}")
    metric, direction, raw = match.groups()
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"--target value must be a number, got {raw!r} in {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"--target value must be finite, got {raw!r} in {text!r}")
    if direction == "=":
        direction = "<=" if _lower_is_better(metric) else ">="
    bounded = any(metric.endswith(name) for name in BOUNDED_METRICS)
    if bounded and ((direction == ">=" and value > 1) or (direction == "<=" and value < 0)):
        raise ValueError(f"--target {text!r} can never be reached: {metric} lies between 0 and 1")
    if _lower_is_better(metric) and direction == "<=" and value < 0:
        raise ValueError(f"--target {text!r} can never be reached: {metric} is not negative")
    return Target(metric, direction, value)


def target_recorder(target: Target) -> Any:
    """A Keras callback that records when ``target`` is first reached and stops training there.

    Its ``result()`` gives the per-epoch values of the metric, whether and at which epoch
    (1-based) the target was reached, the seconds to it (from the end of the first step) and the
    seconds before the clock started (the first step: tracing and compilation). Keras is imported
    here, not with the module, so that ``--target`` is parsed without it."""
    import keras

    class TargetRecorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.target = target
            self.values: list[float] = []
            self.epochs: int | None = None
            self.seconds: float | None = None
            self.compile_seconds: float | None = None
            self._begin = self._clock = 0.0
            self.missing: list[str] | None = None

        def on_train_begin(self, logs: dict | None = None) -> None:
            self._begin = time.perf_counter()
            self._clock = 0.0

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if not self._clock:
                self._clock = time.perf_counter()
                self.compile_seconds = self._clock - self._begin

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            if self.target.metric not in logs:
                # A metric the model does not log: stop at once rather than train to the maximum.
                self.missing = sorted(logs)
                self.model.stop_training = True
                return
            value = float(logs[self.target.metric])
            self.values.append(value)
            if self.epochs is None and self.target.reached(value):
                self.epochs = epoch + 1
                self.seconds = time.perf_counter() - (self._clock or self._begin)
                self.model.stop_training = True

        def result(self) -> dict[str, Any]:
            if self.missing is not None:
                raise ValueError(
                    f"--target metric {self.target.metric!r} is not logged by this model; "
                    f"it logs {', '.join(self.missing) or 'nothing'}"
                )
            return {
                **self.target.to_dict(),
                "reached": self.epochs is not None,
                "epochs": self.epochs,
                "seconds": self.seconds,
                "compile_seconds": self.compile_seconds,
                "values": self.values,
            }

    return TargetRecorder()
