"""docs/results-schema.md against the results.json that a real small ``mpbench run`` writes.

One tiny run covers nearly every key: ``--strategy mirrored`` adds the distributed record (and
its one-replica baseline), ``--repeats 4`` the warm-up and four repeats of each, and a data
set with one undecodable image, run with ``--skip-bad-images``, fills ``data.skipped_images``.
Every key path the run writes must be in the document's table, and every key the table marks
as present in such a run must be in it.
Keys that only a GPU or ``--workers`` writes are checked against the run when it has them, and
otherwise against mpcore's source: the key's name must still appear there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

# The one place this module names the CLI's entry point.
from mpcore.face.cli import main

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DOC = REPO / "docs" / "results-schema.md"
SOURCE = REPO / "mpcore"

#: The "present" values of the table that the tiny run below must show.
IN_THE_RUN = {"always", "--strategy", "--skip-bad-images", "--repeats"}
#: The ones it cannot show on a CPU in a few seconds, or in its float32-only plan (checked against
#: the source instead).
ELSEWHERE = {"GPU", "--workers", "--repeats auto", "--target", "loss scaling"}

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


def key_paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Every key path of a JSON value: ``a.b`` for objects, ``a[].b`` for lists of objects."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            yield from key_paths(item, f"{prefix}[]")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """results.json of ``mpbench run --strategy mirrored --skip-bad-images --repeats 4`` with
    tiny settings."""
    from mpcore.data.ships import images_dir
    from mpcore.data.synthetic import write_synthetic_ships

    work = tmp_path_factory.mktemp("schema")
    # 10 per class less one bad image: 39 training and 10 validation images. With batch 2 on
    # each of 2 replicas, neither split ends in a batch of 1, which would leave one replica an
    # empty shard.
    root = write_synthetic_ships(work / "ships", per_class=10, image_size=32)
    (images_dir(root) / "000001.jpg").write_bytes(b"not an image")
    # With a GPU visible, mirrored replicates over the GPUs (--cpu-replicas is refused there).
    split_cpu = [] if tf.config.list_physical_devices("GPU") else ["--cpu-replicas", "2"]
    argv = ["run", "--profile", "quick", "--data", str(root), "--skip-bad-images"]
    argv += ["--precision", "float32"]
    argv += ["--epochs", "1", "--image-size", "32", "--batch-size", "2"]
    argv += ["--strategy", "mirrored", *split_cpu, "--out", str(work / "run")]
    argv += ["--repeats", "4"]  # the repeats and the warm-up write keys of their own (4: the
    # fewest that can decide one comparison, the one-replica row against the mirrored one)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("TF_CONFIG", "MPBENCH_FAULT", "MPBENCH_WORKER_FAULT"):
            patch.delenv(name, raising=False)
        patch.setenv("MPBENCH_CACHE", str(work / "cache"))
        code = main(argv)
    document = json.loads((work / "run" / "results.json").read_text())
    assert code == 0, [(r["name"], r["reason"]) for r in document["configurations"]]
    return document


@pytest.mark.slow
def test_every_key_of_a_run_is_documented(results: dict[str, Any]) -> None:
    documented = documented_keys()
    undocumented = sorted(set(key_paths(results)) - set(documented))
    assert not undocumented, f"add to {SCHEMA_DOC.name}: {undocumented}"


@pytest.mark.slow
def test_every_documented_key_is_in_a_run(results: dict[str, Any]) -> None:
    documented = documented_keys()
    unknown = {path: present for path, present in documented.items() if present not in IN_THE_RUN}
    assert set(unknown.values()) <= ELSEWHERE, f"unknown 'present' values: {unknown}"
    # The run has what its options promise: the distributed record and a skipped image.
    assert results["data"]["skipped_images"], "the bad image was not left out"
    assert any("scaling" in record for record in results["configurations"])
    written = set(key_paths(results))
    missing = sorted(path for path, present in documented.items() if present in IN_THE_RUN)
    missing = [path for path in missing if path not in written]
    assert not missing, f"documented in {SCHEMA_DOC.name} but not written by a run: {missing}"


def test_keys_a_cpu_run_cannot_show_are_still_in_the_source() -> None:
    """GPU-only and ``--workers``-only keys: a renamed or removed key fails here."""
    source = "\n".join(path.read_text() for path in sorted(SOURCE.rglob("*.py")))
    documented = documented_keys()
    elsewhere = [path for path, present in documented.items() if present in ELSEWHERE]
    assert elsewhere, "the table marks no GPU or --workers keys"
    gone = []
    for path in elsewhere:
        name = path.rsplit(".", 1)[-1].removesuffix("[]")
        if not re.search(rf"""["']{re.escape(name)}["']|\b{re.escape(name)}\s*=""", source):
            gone.append(path)
    assert not gone, f"documented keys whose names mpcore no longer writes: {gone}"


def test_the_table_parser_reads_every_row() -> None:
    """Every table row of the document is parsed (a malformed row would go unchecked)."""
    rows = [line for line in SCHEMA_DOC.read_text().splitlines() if line.startswith("| `")]
    assert len(documented_keys()) == len(rows) > 100
