"""The shapes of the JSON files mpbench reads back: ``results.json`` and pytest-benchmark files.

``results.json`` has one JSON Schema, ``results.schema.json`` beside this module: the writer
(:func:`mpcore.run.files.checked_results`) validates a document before it writes it and
``mpbench report`` / ``--resume`` validate what they read, so they cannot disagree; the key
table of ``docs/results-schema.md`` is generated from it. A number must be finite (Python's
``json`` reads ``NaN`` and ``Infinity`` tokens; the schema's ``number`` does not accept them),
and a missing key reads as null. A file that breaks the schema is one line naming the first key
that does. No TensorFlow here.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

SCHEMA = "mpbench-results/1"
#: The schema versions this mpbench reads.
READABLE_SCHEMAS = (SCHEMA,)
SCHEMA_PREFIX = "mpbench-results/"

RESULTS_FILE = "results.json"
SCHEMA_FILE = "results.schema.json"
BENCHMARK_SCHEMA_FILE = "benchmark.schema.json"


def strategy_of(config: Mapping[str, str]) -> str:
    """The tf.distribute strategy a planned configuration trains under."""
    return config.get("strategy", "none")


def mode_of(config: Mapping[str, str]) -> dict[str, str]:
    """The ``RunConfig`` fields of a planned configuration (without its strategy)."""
    return {"precision": config["precision"], "xla": config["xla"]}


class ShapeError(ValueError):
    """A JSON document breaks its schema; the message names the key."""


@functools.cache
def schema_document(name: str = SCHEMA_FILE) -> dict[str, Any]:
    """The JSON Schema ``name`` shipped with mpcore.run (``results.schema.json`` by default)."""
    return json.loads(resources.files("mpcore.run").joinpath(name).read_text())


def _is_number(_checker: Any, value: Any) -> bool:
    # A Python int is always finite (and math.isfinite of a huge one overflows).
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _is_integer(checker: Any, value: Any) -> bool:
    return _is_number(checker, value) and (isinstance(value, int) or value.is_integer())


@functools.cache
def _validator(name: str, pointer: str = "") -> Any:
    """A validator of the schema ``name`` (or of its part at the JSON pointer ``pointer``) whose
    numbers are finite."""
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": _is_number, "integer": _is_integer}
    )
    finite = validators.extend(Draft202012Validator, type_checker=checker)
    schema = schema_document(name)
    for part in filter(None, pointer.split("/")):
        schema = schema[part]
    return finite(schema)


def key_path(parts: Iterable[Any], prefix: str = "") -> str:
    """``configurations[0].result.ms_per_step`` from the parts of a JSON path."""
    text = prefix
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_KINDS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "boolean": "a boolean",
    "number": "a number",
    "integer": "an integer",
    "null": "null",
}


def _describe(value: Any, numeric: bool = False) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-" if value < 0 else "") + "Infinity"
    if isinstance(value, int | float):
        return repr(value) if numeric else "a number"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return {dict: "an object", str: "a string"}.get(type(value), type(value).__name__)


def _wanted(kinds: Any) -> str:
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    return " or ".join(_KINDS.get(kind, kind) for kind in kinds)


def _declared(schema: Mapping[str, Any], name: str) -> str:
    """What the schema says the missing key ``name`` of an object should be."""
    kinds = (schema.get("properties") or {}).get(name, {}).get("type")
    return _wanted(kinds) if kinds else "present"


def _message(error: Any, prefix: str = "") -> str:
    """One line for a jsonschema ``ValidationError``: the key and what is wrong with it."""
    where = key_path(error.absolute_path, prefix)
    value, rule, limit = error.instance, error.validator, error.validator_value
    if rule == "required":
        missing = next(name for name in limit if name not in value)
        # A missing key reads as null, as the code that reads it with .get() sees it.
        wanted = _declared(error.schema, missing)
        return f"key {key_path([missing], where)!r} should be {wanted}, found null"
    if rule == "type":
        numeric = any(
            kind in ("number", "integer") for kind in ([limit] if isinstance(limit, str) else limit)
        )
        return f"key {where!r} should be {_wanted(limit)}, found {_describe(value, numeric)}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if rule in bounds:
        return f"key {where!r} should be a number {bounds[rule]} {limit}, found {value!r}"
    if rule == "enum":
        return f"key {where!r} should be one of {', '.join(map(repr, limit))}, found {value!r}"
    if rule == "const":
        return f"key {where!r} should be {limit!r}, found {value!r}"
    if rule == "minItems":
        return f"key {where!r} should list at least {limit}, found {_describe(value)}"
    if rule == "pattern":
        return f"key {where!r} should match {limit}, found {value!r}"
    return f"key {where!r}: {error.message}"


def _order(error: Any) -> list[tuple[bool, Any]]:
    """Errors in key order (a missing key in the place its name sorts)."""
    path = list(error.absolute_path)
    if error.validator == "required":
        path.append(next(name for name in error.validator_value if name not in error.instance))
    return [(isinstance(part, str), part) for part in path]


def _check(document: Any, name: str, pointer: str = "", prefix: str = "") -> None:
    errors = sorted(_validator(name, pointer).iter_errors(document), key=_order)
    if errors:
        raise ShapeError(_message(errors[0], prefix))


def check_schema_version(document: Mapping[str, Any]) -> None:
    """Raise :class:`ShapeError` unless ``document`` is a results.json version this reads."""
    version = document.get("schema")
    if version not in READABLE_SCHEMAS:
        raise ShapeError(
            f"schema {version!r} is not one this mpbench reads "
            f"(it reads {', '.join(READABLE_SCHEMAS)})"
        )


def check_results(document: Any) -> None:
    """Raise :class:`ShapeError` unless ``document`` is a results.json that the schema accepts."""
    if isinstance(document, dict):
        check_schema_version(document)
    _check(document, SCHEMA_FILE)


def check_record(record: Any, position: int = 0) -> None:
    """Raise :class:`ShapeError` unless ``record`` is a configuration record the schema
    accepts (as ``configurations[position]``)."""
    _check(
        record,
        SCHEMA_FILE,
        "/properties/configurations/items",
        f"configurations[{position}]",
    )


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


def check_benchmarks(document: Any) -> None:
    """Raise :class:`ShapeError` unless ``document`` is a pytest-benchmark file (at least one
    benchmark, each with the types the report reads)."""
    if isinstance(document, dict) and document.get("benchmarks") == []:
        raise ShapeError("key 'benchmarks' is an empty list: the file holds no benchmark")
    _check(document, BENCHMARK_SCHEMA_FILE)
