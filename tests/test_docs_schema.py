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

#: The "present" values of the table, and which document shows them (the two-worker run trains
#: mixed_float16: its records have the loss-scaling keys).
IN_THE_MIRRORED_RUN = {"always", "--strategy", "--skip-bad-images", "--repeats"}
IN_THE_WORKERS_RUN = {"--workers", "loss scaling"}
ON_A_GPU = {"GPU"}
#: Keys of runs too long for the suite (rounds added until decided, training to a target): their
#: names are checked against mpcore's source instead.
IN_THE_SOURCE = {"--repeats auto", "--target"}
SOURCE = REPO / "mpcore"

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
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_every_key_of_a_run_is_documented(mirrored_run, workers_run, gpu_keys) -> None:
    documented = documented_keys()
    written = set(key_paths(mirrored_run.document)) | set(key_paths(workers_run.document))
    undocumented = sorted((written | gpu_keys) - set(documented))
    assert not undocumented, f"add to {SCHEMA_DOC.name}: {undocumented}"


def test_every_documented_key_is_in_a_run(mirrored_run, workers_run, gpu_keys) -> None:
    documented = documented_keys()
    known = IN_THE_MIRRORED_RUN | IN_THE_WORKERS_RUN | ON_A_GPU | IN_THE_SOURCE
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


def test_keys_of_the_long_runs_are_still_in_the_source() -> None:
    """``--repeats auto`` and ``--target`` keys: a renamed or removed key's name fails here (a
    weaker check than the runs' above, for runs too long for the suite)."""
    source = "\n".join(path.read_text() for path in sorted(SOURCE.rglob("*.py")))
    elsewhere = [path for path, present in documented_keys().items() if present in IN_THE_SOURCE]
    assert elsewhere, "the table marks no --repeats auto or --target keys"
    gone = []
    for path in elsewhere:
        name = path.rsplit(".", 1)[-1].removesuffix("[]")
        if not re.search(rf"""["']{re.escape(name)}["']|\b{re.escape(name)}\s*=""", source):
            gone.append(path)
    assert not gone, f"documented keys whose names mpcore no longer writes: {gone}"
