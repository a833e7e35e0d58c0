"""Synthetic results.json pieces for report tests that need no training: a configuration's fit
result, a repeat's ``--target`` record and the configuration record itself. The report tests
(verdicts, one judgement per report, time-to-target numbers) build their runs from these."""

from __future__ import annotations

from typing import Any

#: Per-epoch curves of a run that learns: a record of N epochs holds the first N values.
CURVES = {
    "loss": [0.6, 0.5, 0.4],
    "accuracy": [0.8, 0.9, 0.95],
    "val_loss": [0.7, 0.6, 0.5],
    "val_accuracy": [0.7, 0.8, 0.92],
}


def fit_result(steady_epoch_seconds: float, ms_per_step: float, epochs: int) -> dict[str, Any]:
    """A finished configuration's ``result``: a 2 s first epoch, then steady epochs, 240 images."""
    return {
        "first_epoch_seconds": 2.0,
        "steady_epoch_seconds": steady_epoch_seconds,
        "ms_per_step": ms_per_step,
        "images_per_second": 240 / steady_epoch_seconds,
        "epoch_seconds": [2.0] + [steady_epoch_seconds] * (epochs - 1),
        **{name: values[:epochs] for name, values in CURVES.items()},
    }


def target_record(repeat: int, epoch_seconds: float, reached: bool = True) -> dict[str, Any]:
    """Repeat ``repeat``'s ``--target val_accuracy>=0.9`` record: reached in 3 epochs (a little
    slower each repeat), or not at all."""
    return {
        "metric": "val_accuracy",
        "direction": ">=",
        "value": 0.9,
        "reached": reached,
        "epochs": 3 if reached else None,
        "seconds": 3 * epoch_seconds * (1 + repeat / 100) if reached else None,
        "compile_seconds": 2.0,
        "values": list(CURVES["val_accuracy"]),
    }


def configuration(name: str, result: dict[str, Any], repeats: list[dict]) -> dict[str, Any]:
    return {"name": name, "config": {}, "status": "ok", "result": result, "repeats": repeats}
