"""mpbench core: precision modes, models, ship data, training, telemetry and reports.

The public names below are imported lazily (PEP 562), so ``import mpcore`` -- and with it the
``mpbench`` command's ``--help``, argument errors and ``report`` -- does not pay for importing
TensorFlow, and the CLI can quieten TensorFlow's native logging before the first import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "CLASS_NAMES": "mpcore.data",
    "DataError": "mpcore.data",
    "ShipIndex": "mpcore.data",
    "read_ship_index": "mpcore.data",
    "stratified_split": "mpcore.data",
    "MODELS": "mpcore.models",
    "WeightsError": "mpcore.models",
    "build_model": "mpcore.models",
    "PRECISIONS": "mpcore.modes",
    "XLA_MODES": "mpcore.modes",
    "ModeMismatchError": "mpcore.modes",
    "RunConfig": "mpcore.modes",
    "applied": "mpcore.modes",
    "check_model": "mpcore.modes",
    "RunResult": "mpcore.training",
    "TrainSettings": "mpcore.training",
    "make_train_step": "mpcore.training",
    "train": "mpcore.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mpcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
