"""docs/results-schema.md against results.json documents that real runs write.

The session's mirrored run (tests/scenarios.py) covers nearly every key: ``--strategy mirrored``
adds the distributed record (and its one-replica baseline), ``--repeats 4`` the warm-up, four
repeats of each and the comparison they decide, and a data set with one undecodable image, run
with ``--skip-bad-images``, fills ``data.skipped_images``. The session's two-worker run adds the
``--workers`` keys. The ``GPU`` keys come from the very functions a run writes them with, under
a simulated T4 (``MPBENCH_FAKE_GPU``) and a stand-in NVML. Every key path a run writes must be in
the document's table, and every key the table documents must be in one of these documents: a
key a run stops writing fails here (shown by a planted removal).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DOC = REPO / "docs" / "results-schema.md"
#: The source that writes ``auto_repeats`` (the ``--repeats auto`` loop).
AUTO_WRITER = (REPO / "mpcore" / "run" / "plan.py").read_text()

#: The "present" values of the table, and which document shows them (the two-worker run trains
#: mixed_float16: its records have the loss-scaling keys).
IN_THE_MIRRORED_RUN = {"always", "--strategy", "--skip-bad-images", "--repeats"}
IN_THE_WORKERS_RUN = {"--workers", "loss scaling"}
ON_A_GPU = {"GPU"}
#: Keys written by functions this test calls directly (the session's runs have no --target).
FROM_FUNCTIONS = {"--target"}
#: Keys of a ``--repeats auto`` run, a loop over whole runs: checked against the writer's source.
IN_THE_SOURCE = {"--repeats auto"}

#: A table row: | `key.path` | type | present | meaning |
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|[^|]*\|\s*`?([^|`]+?)`?\s*\|")


def documented_keys() -> dict[str, str]:
    """Key path -> "present" value, from the table of ``docs/results-schema.md``."""
    keys: dict[str, str] = {}
    for line in SCHEMA_DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            path, present = match.group(1), match.group(2).strip()
            assert path not in keys, f"{path} is documented twice"
            keys[path] = present
    return keys


#: Objects keyed by data, not by the schema (one entry per variable of the model): their keys
#: are not key paths.
MAPS = {"configurations[].workers[].variable_sha256"}


def key_paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Every key path of a JSON value: ``a.b`` for objects, ``a[].b`` for lists of objects."""
    if isinstance(value, dict) and prefix not in MAPS:
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            yield from key_paths(item, f"{prefix}[]")


def test_the_table_parser_reads_every_row() -> None:
    """Every table row of the document is parsed (a malformed row would go unchecked)."""
    rows = [line for line in SCHEMA_DOC.read_text().splitlines() if line.startswith("| `")]
    assert len(documented_keys()) == len(rows) > 100


def missing(
    documented: dict[str, str], present: Iterable[str], written: Iterable[str]
) -> list[str]:
    """The documented key paths whose "present" value is in ``present`` that ``written`` lacks."""
    have = set(written)
    return sorted(p for p, when in documented.items() if when in present and p not in have)


@pytest.fixture(scope="module")
def gpu_keys(monkeypatch_module) -> set[str]:
    """Key paths of the GPU-only parts of a run's results.json, written by mpcore's own
    functions under a simulated T4 and an NVML that knows one device (and answers nothing
    else, which every field allows: null)."""
    from mpcore.probe import telemetry
    from mpcore.probe.capability import machine_record
    from mpcore.run.store import finished_record

    class OneDeviceNvml:
        def nvmlDeviceGetCount(self) -> int:
            return 1

    monkeypatch_module.setenv("MPBENCH_FAKE_GPU", "Tesla T4@7.5")
    monkeypatch_module.setattr(telemetry, "nvml", OneDeviceNvml)
    with telemetry.Sampler(interval=0.001) as sampler:
        while not sampler.series:
            time.sleep(0.001)
    machine = machine_record()
    record = finished_record("float32+xla_off", {}, {"machine": machine}, sampler)
    return set(key_paths({"machine": machine, "configurations": [record]}))


@pytest.fixture(scope="module")
def function_keys() -> set[str]:
    """Key paths of the parts of results.json that only a float16 configuration or a
    ``--target`` run writes, from the functions that write them: the loss-scale summary, the
    target recorder's result and the time-to-target rows of the statistics."""
    from mpcore.report.judging import run_statistics
    from mpcore.report.target import target_records
    from mpcore.run.lossscale import summarise_loss_scale
    from mpcore.train.target import parse_target, target_recorder

    target = target_recorder(parse_target("val_accuracy=0.9")).result()
    reached = {**target, "reached": True, "epochs": 2, "seconds": 3.0, "compile_seconds": 1.0}
    runs = [
        {"repeat": r, "status": "ok", "target": reached, "ms_per_step": 10.0 + r} for r in range(4)
    ]
    records = [{"name": name, "status": "ok", "repeats": runs} for name in ("float32+xla_off", "x")]
    document = {"settings": {"target": "val_accuracy>=0.9"}, "configurations": records}
    result = {"loss_scaling": summarise_loss_scale(32768.0, [4.0], [3], [10]), "target": target}
    return set(
        key_paths(
            {
                "configurations": [{"result": result}],
                "statistics": {
                    **run_statistics(document),
                    "time_to_target": target_records(document),
                },
            }
        )
    )


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_every_key_of_a_run_is_documented(
    mirrored_run, workers_run, gpu_keys, function_keys
) -> None:
    documented = documented_keys()
    written = set(key_paths(mirrored_run.document)) | set(key_paths(workers_run.document))
    undocumented = sorted((written | gpu_keys | function_keys) - set(documented))
    assert not undocumented, f"add to {SCHEMA_DOC.name}: {undocumented}"


def test_every_documented_key_is_in_a_run(
    mirrored_run, workers_run, gpu_keys, function_keys
) -> None:
    documented = documented_keys()
    known = IN_THE_MIRRORED_RUN | IN_THE_WORKERS_RUN | ON_A_GPU | FROM_FUNCTIONS | IN_THE_SOURCE
    unknown = {path: present for path, present in documented.items() if present not in known}
    assert not unknown, f"unknown 'present' values: {unknown}"
    results = mirrored_run.document
    assert mirrored_run.code == 0, [(r["name"], r["reason"]) for r in results["configurations"]]
    # The runs have what their options promise: a skipped image, the distributed records.
    assert results["data"]["skipped_images"], "the bad image was not left out"
    assert any("scaling" in record for record in results["configurations"])
    assert any("workers" in record for record in workers_run.document["configurations"])
    gaps = {
        "the mirrored run": missing(documented, IN_THE_MIRRORED_RUN, key_paths(results)),
        "the two-worker run": missing(
            documented, IN_THE_WORKERS_RUN, key_paths(workers_run.document)
        ),
        "the GPU records": missing(documented, ON_A_GPU, gpu_keys),
        "the target records": missing(documented, FROM_FUNCTIONS, function_keys),
        "--repeats auto's writer": [
            path
            for path, when in documented.items()
            if when in IN_THE_SOURCE and f'"{path.rsplit(".", 1)[-1]}"' not in AUTO_WRITER
        ],
    }
    gaps = {where: keys for where, keys in gaps.items() if keys}
    assert not gaps, f"documented in {SCHEMA_DOC.name} but not written: {gaps}"


@pytest.mark.parametrize(
    "removed",
    [
        "status",  # a name that appears everywhere in the source
        "configurations[].result.steady_epoch_seconds",
        "data.skipped_images[].reason",
        "configurations[].scaling.scaling_efficiency",
    ],
)
def test_a_key_a_run_stops_writing_is_caught(mirrored_run, removed: str) -> None:
    """A planted removal: the same run's document with one documented key deleted everywhere
    fails the check above, whatever other places of the source still name the key."""
    documented = documented_keys()
    assert removed in documented
    document = copy.deepcopy(mirrored_run.document)
    assert not missing(documented, IN_THE_MIRRORED_RUN, key_paths(document))
    delete_everywhere(document, removed)
    assert missing(documented, IN_THE_MIRRORED_RUN, key_paths(document)) == [removed]


def delete_everywhere(value: Any, path: str) -> None:
    """Delete the key at ``path`` (``a.b``, ``a[].b``) wherever it occurs in ``value``."""
    head, _, rest = path.partition(".")
    key, is_list = head.removesuffix("[]"), head.endswith("[]")
    if not rest:
        value.pop(key, None)
        return
    child = value.get(key)
    for item in child if is_list else [child]:
        if isinstance(item, dict):
            delete_everywhere(item, rest)
