"""Type checks of the JSON files mpbench reads back: ``results.json`` and pytest-benchmark files.

A file that parses but holds the wrong types (``"settings": "x"``, ``"configurations": [1]``)
must be one line naming the key, not a ``TypeError`` deep in a table. Only what mpbench reads
is checked; unknown keys are allowed. No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NUMBER = (int, float)
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}


SCHEMA = "mpbench-results/1"


RESULTS_FILE = "results.json"


def strategy_of(config: Mapping[str, str]) -> str:
    """The tf.distribute strategy a planned configuration trains under."""
    return config.get("strategy", "none")


def mode_of(config: Mapping[str, str]) -> dict[str, str]:
    """The ``RunConfig`` fields of a planned configuration (without its strategy)."""
    return {"precision": config["precision"], "xla": config["xla"]}


class ShapeError(ValueError):
    """A JSON document has a key of the wrong type; the message names the key."""


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, NUMBER):
        return "a number"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _expect(value: Any, kind: type | tuple[type, ...], key: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return value
    kinds = kind if isinstance(kind, tuple) else (kind,)
    numeric = kinds == NUMBER
    ok = isinstance(value, kinds) and not (numeric and isinstance(value, bool))
    if not ok:
        wanted = "a number" if numeric else _TYPE_NAMES.get(kinds[0], kinds[0].__name__)
        raise ShapeError(f"key {key!r} should be {wanted}, found {_describe(value)}")
    return value


def _numbers(value: Any, key: str) -> None:
    for position, item in enumerate(_expect(value, list, key)):
        _expect(item, NUMBER, f"{key}[{position}]", optional=True)


#: Result fields the run table and plots read from every ``ok`` record.
RESULT_NUMBERS = ("first_epoch_seconds", "steady_epoch_seconds", "ms_per_step", "images_per_second")
RESULT_SERIES = ("loss", "accuracy", "val_accuracy")


def check_results(document: dict[str, Any]) -> None:
    """Raise :class:`ShapeError` unless ``document`` (a results.json with its schema checked)
    has the types mpbench reads."""
    for key in ("settings", "data"):
        _expect(document.get(key, {}), dict, key)
    _expect(
        document["data"].get("fingerprint") if "data" in document else None,
        dict,
        "data.fingerprint",
        optional=True,
    )
    statistics = _expect(document.get("statistics", {}), dict, "statistics")
    _expect(statistics.get("band", 0.0), NUMBER, "statistics.band")  # report judges with it
    for position, name in enumerate(_expect(document.get("planned", []), list, "planned")):
        _expect(name, str, f"planned[{position}]")
    skipped = _expect(
        document.get("data", {}).get("skipped_images", []), list, "data.skipped_images"
    )
    for position, image in enumerate(skipped):
        _expect(image, dict, f"data.skipped_images[{position}]")
        _expect(image.get("path"), str, f"data.skipped_images[{position}].path")
    for position, record in enumerate(
        _expect(document.get("configurations", []), list, "configurations")
    ):
        where = f"configurations[{position}]"
        _expect(record, dict, where)
        _expect(record.get("name"), str, f"{where}.name")
        _expect(record.get("status"), str, f"{where}.status")
        _expect(record.get("config", {}), dict, f"{where}.config")
        if record["status"] != "ok":
            continue
        result = _expect(record.get("result"), dict, f"{where}.result")
        for key in RESULT_NUMBERS:
            _expect(result.get(key), NUMBER, f"{where}.result.{key}")
        for key in RESULT_SERIES:
            _numbers(result.get(key), f"{where}.result.{key}")
        scaling = _expect(
            result.get("loss_scaling"), dict, f"{where}.result.loss_scaling", optional=True
        )
        if scaling is not None:
            _check_loss_scaling(scaling, f"{where}.result.loss_scaling")
        _expect(record.get("telemetry"), dict, f"{where}.telemetry", optional=True)


def _check_loss_scaling(scaling: dict[str, Any], where: str) -> None:
    """A configuration's loss-scale history (:func:`mpcore.run.worker.summarise_loss_scale`)."""
    _expect(scaling.get("initial_scale"), NUMBER, f"{where}.initial_scale")
    for key in ("per_epoch", "skipped_steps", "steps"):
        _numbers(scaling.get(key), f"{where}.{key}")
    _expect(scaling.get("skipped_total"), NUMBER, f"{where}.skipped_total")
    _expect(scaling.get("collapsed"), bool, f"{where}.collapsed")
    _expect(scaling.get("collapse_rule"), str, f"{where}.collapse_rule", optional=True)


def check_benchmarks(document: dict[str, Any]) -> None:
    """Raise :class:`ShapeError` unless ``document`` (a pytest-benchmark file) lists at least
    one benchmark and each has the types the report reads."""
    benchmarks = _expect(document.get("benchmarks"), list, "benchmarks")
    if not benchmarks:
        raise ShapeError("key 'benchmarks' is an empty list: the file holds no benchmark")
    for position, bench in enumerate(benchmarks):
        where = f"benchmarks[{position}]"
        _expect(bench, dict, where)
        _expect(bench.get("group"), str, f"{where}.group", optional=True)
        extra = _expect(bench.get("extra_info", {}), dict, f"{where}.extra_info")
        for key in ("precision", "xla"):
            _expect(extra.get(key), str, f"{where}.extra_info.{key}", optional=True)
        for key in ("ms_per_step", "images_per_second"):
            _expect(extra.get(key), NUMBER, f"{where}.extra_info.{key}", optional=True)
        _expect(bench.get("stats", {}), dict, f"{where}.stats")
