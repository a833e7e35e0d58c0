"""mpbench core: precision modes, models, ship data, training, telemetry and reports."""

from mpcore.data import CLASS_NAMES, DataError, ShipIndex, read_ship_index, stratified_split
from mpcore.models import MODELS, WeightsError, build_model
from mpcore.modes import (
    PRECISIONS,
    XLA_MODES,
    ModeMismatchError,
    RunConfig,
    applied,
    check_model,
)
from mpcore.training import RunResult, TrainSettings, make_train_step, train

__all__ = [
    "CLASS_NAMES",
    "MODELS",
    "PRECISIONS",
    "XLA_MODES",
    "DataError",
    "ModeMismatchError",
    "RunConfig",
    "RunResult",
    "ShipIndex",
    "TrainSettings",
    "WeightsError",
    "applied",
    "build_model",
    "check_model",
    "make_train_step",
    "read_ship_index",
    "stratified_split",
    "train",
]
