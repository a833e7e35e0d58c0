"""Finding and reading the file ``mpbench report`` is given: a run folder, a ``results.json``, a
pytest-benchmark JSON file or its ``.benchmarks`` folder, each checked before it is rendered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mpcore.run.schema import SCHEMA_PREFIX, ShapeError, check_benchmarks, check_results


class ReportError(Exception):
    """The input is not a results.json or pytest-benchmark file; one line for the user."""


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise ReportError(f"{path} is not valid JSON ({error})") from None


def is_benchmark_json(document: Any) -> bool:
    return isinstance(document, dict) and isinstance(document.get("benchmarks"), list)


def is_results_json(document: Any) -> bool:
    return isinstance(document, dict) and str(document.get("schema", "")).startswith(SCHEMA_PREFIX)


def locate(path: str | Path) -> Path:
    """The JSON file ``mpbench report PATH`` means: the file itself, ``PATH/results.json``, or
    the newest pytest-benchmark file under a folder such as ``.benchmarks/``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ReportError(f"not found: {path}")
    if (path / "results.json").is_file():
        return path / "results.json"
    # is_file() follows links: a dangling .json link (or a folder named x.json) is passed over.
    files = [p for p in path.rglob("*.json") if p.is_file()]
    candidates = sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        raise ReportError(f"{path} holds no results.json and no pytest-benchmark JSON file")
    return candidates[0]


def load(path: str | Path) -> tuple[str, dict[str, Any], Path]:
    """Return ``(kind, document, file)`` with kind ``"run"`` or ``"benchmark"``."""
    file = locate(path)
    document = _load_json(file)
    kind = (
        "run" if is_results_json(document) else "benchmark" if is_benchmark_json(document) else ""
    )
    if kind:
        try:
            (check_results if kind == "run" else check_benchmarks)(document)
        except ShapeError as error:
            raise ReportError(f"{file}: {error}") from None
        return kind, document, file
    raise ReportError(f"{file} is neither an mpbench results.json nor a pytest-benchmark file")
