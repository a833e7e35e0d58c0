"""Write docs/results-schema.md from the JSON Schema of results.json.

The key table is generated from ``mpcore/run/results.schema.json``: one row per key, with its
type (and range), when it is present (the schema's ``x-present``) and its meaning (its
``description``). ``python tools/results_schema_doc.py`` rewrites the page; ``--check`` exits 1
when the page is not what the schema gives (tests/test_results_schema.py runs that check).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "mpcore" / "run" / "results.schema.json"
PAGE = ROOT / "docs" / "results-schema.md"

INTRO = """# results.json

`mpbench run` writes `OUT/results.json` (schema `mpbench-results/1`) before the first
configuration starts and rewrites it after every configuration, always through an fsynced
temporary file and a rename, so the file on disk is always a complete document.
`mpbench report OUT` re-renders the table, `results.csv` and the plots from it.

This page is generated from the JSON Schema `results.schema.json` of the `mpcore.run` package
by `python tools/results_schema_doc.py` (a test fails when it is out of date). The writer checks
every document against that schema before writing it, and `mpbench report` and `--resume` check
what they read against it, so a file either one refuses is never written: a number must be
finite (JSON has no `NaN` or `Infinity`; a value that was not finite, such as a `NaN` validation
loss, is written as `null`; `mpbench report` refuses the `NaN`/`Infinity` tokens that Python's
`json` accepts), times are positive, counts are integers, statuses are the ones listed, and the
`schema` must be a version this mpbench reads (`mpbench-results/1`), else one line names the
versions it reads. A missing key reads as `null`. Keys not listed here are allowed. A finished
record whose result breaks the schema (a step time of 0) is stored as failed, with the reason.
The **type** column gives the schema's ranges in parentheses. A `configurations[]` record with
`status` `ok` must have a `result` with the step times, `loss`, `accuracy` and `val_accuracy`;
an `ok` element of `repeats` must have its `ms_per_step`.

## Keys

One row per key. A key path is dotted; `[]` stands for "every element of this list", so
`configurations[].result.ms_per_step` is the `ms_per_step` of the `result` of each record in
`configurations`. A list of numbers or strings has one row for the list itself.

**present** says when the key is there:

- `always`: in every run (its value may be `null`, as the meaning says);
- `--strategy`: in the records of configurations trained under `--strategy mirrored|multiworker`
  (or `--workers`), the `@strategy` records, not their one-replica baselines;
- `--skip-bad-images`: in the elements of `data.skipped_images`, a list that is empty unless
  images were left out;
- `GPU`: only when TensorFlow sees a GPU (`gpus[]` elements) or NVML could sample one
  (`gpu_series[]` elements); on a CPU these lists are empty;
- `--workers`: in the record of a configuration trained on local workers (`--workers N`).
- `--repeats`: when each configuration runs more than once (`--repeats N` with N > 1, the
  default of both profiles), which also runs an untimed warm-up first.
- `--repeats auto`: in a run with `--repeats auto` (rounds added until every comparison is
  decided or `--budget` is spent).
- `--target`: in a run with `--target METRIC=VALUE` ([time-to-target.md](time-to-target.md)).
- `loss scaling`: in the records of configurations trained with a dynamic loss scale
  (`mixed_float16`, `amp_rewrite`).

A configuration that failed has the same keys as one that finished, with `status` `failed`, its
`reason`, and `result` and `telemetry` `null`. `tests/test_docs_schema.py` checks this table
against the `results.json` of a real small `mpbench run --strategy mirrored --skip-bad-images
--repeats 4` and of a real `mixed_float16 --workers 2` run: every key they write is in the table,
and every key of the table marked `always`, `--strategy`, `--skip-bad-images` or `--repeats` is
in the first, every `--workers` and `loss scaling` key in the second; the `GPU` keys are checked
against the records mpcore's own functions write under a simulated T4 (`MPBENCH_FAKE_GPU`) and an
NVML that knows one device, the `--target` keys against what the target recorder and the
time-to-target table write, and the `--repeats auto` keys against the source of the loop that
writes them.
"""

OUTRO = """
## Files beside it

`results.csv` (the table's columns at full precision; a distributed run adds `replicas`,
`global_batch`, `images_per_s_per_replica`, `scaling_efficiency`), `time_vs_loss.png`,
`curves.png`, `step_time.png`, `gpu_telemetry.png` (only when a GPU was sampled),
`tensorboard/<configuration>/` and `logs/<configuration>.log`: see [cli.md](cli.md#output).
"""

_PLURAL = {"string": "strings", "integer": "integers", "number": "numbers", "null": "nulls"}
_BOUNDS = (
    ("minimum", ">="),
    ("exclusiveMinimum", ">"),
    ("maximum", "<="),
    ("exclusiveMaximum", "<"),
)


def _kinds(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type", [])
    return [kinds] if isinstance(kinds, str) else list(kinds)


def _range(schema: dict[str, Any]) -> str:
    parts = [f"{sign} {schema[key]}" for key, sign in _BOUNDS if key in schema]
    if "enum" in schema:
        parts.append(", ".join(json.dumps(value) for value in schema["enum"]))
    if "const" in schema:
        parts.append(json.dumps(schema["const"]))
    if "minItems" in schema:
        parts.append(f"at least {schema['minItems']}")
    if "pattern" in schema:
        parts.append(
            "MAJOR.MINOR" if schema["pattern"] == r"^[0-9]+\.[0-9]+$" else schema["pattern"]
        )
    return f" ({', '.join(parts)})" if parts else ""


def type_text(schema: dict[str, Any]) -> str:
    """The table's type column: ``number (> 0)``, ``list of numbers or null``, ``object``..."""
    kinds = _kinds(schema)
    nullable = "null" in kinds
    base = next((kind for kind in kinds if kind != "null"), "null")
    if base == "array":
        items = schema.get("items", {})
        inner = [_PLURAL[k] for k in _kinds(items) if k in _PLURAL]
        text = f"list of {' or '.join(inner)}{_range(items)}" if inner else "list"
        text += _range(schema)
    else:
        text = {"array": "list"}.get(base, base) + _range(schema)
    return text + (" or null" if nullable else "")


def rows(schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(key path, its schema) of every documented key, depth first in the schema's order."""
    for name, child in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        if "description" in child:
            yield path, child
        yield from rows(child, path)
        if isinstance(child.get("items"), dict):
            yield from rows(child["items"], f"{path}[]")


def render(schema: dict[str, Any]) -> str:
    table = ["| key | type | present | meaning |", "|---|---|---|---|"]
    for path, child in rows(schema):
        present = child.get("x-present", "always")
        table.append(f"| `{path}` | {type_text(child)} | {present} | {child['description']} |")
    return INTRO + "\n" + "\n".join(table) + "\n" + OUTRO


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = parser.parse_args(argv)
    text = render(json.loads(SCHEMA.read_text()))
    if args.check:
        if PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python tools/results_schema_doc.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
