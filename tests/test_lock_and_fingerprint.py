"""The run folder's lock and the data fingerprint, in-process and in milliseconds.

The subprocess tests (tests/test_reliability2.py) prove the lock between two real ``mpbench
run`` processes and a resume refused on changed data; these pin the same rules where a planted
bug (tools/mutate.py) is caught without starting TensorFlow twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpcore.data.ships import csv_path, fingerprint, images_dir, read_ship_index
from mpcore.run.lock import LOCK_FILE, LockedError, RunLock
from mpcore.run.store import data_change


def test_a_second_lock_on_one_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    said: list[str] = []
    with RunLock(tmp_path, announce=said.append):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(
            LockedError, match=rf"in use by another mpbench run \(pid {os.getpid()}"
        ):
            RunLock(tmp_path, announce=said.append).acquire()
    assert not (tmp_path / LOCK_FILE).exists(), "the lock file outlived its holder"
    assert said == []  # nothing stale to take over
    with RunLock(tmp_path, announce=said.append):  # free again once released
        pass


def test_the_lock_of_a_dead_holder_is_taken_over_and_named(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = gone.stdout.strip()
    (tmp_path / LOCK_FILE).write_text(f"{dead}\n")  # left by a SIGKILLed run: no flock held
    said: list[str] = []
    with RunLock(tmp_path, announce=said.append):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert said == [f"lock: taking over the stale lock of pid {dead} (no longer running)"]


@pytest.fixture
def ships(tmp_path: Path) -> Path:
    from mpcore.data.synthetic import write_synthetic_ships

    return write_synthetic_ships(tmp_path / "ships", per_class=2, image_size=8, seed=0)


def test_the_fingerprint_follows_the_table_and_every_images_bytes(ships: Path) -> None:
    before = fingerprint(read_ship_index(ships))
    assert before == fingerprint(read_ship_index(ships))  # the same data, the same print
    assert before["rows"] == 10
    assert data_change(before, before) is None
    # One byte of one image: only the images' digest changes.
    image = images_dir(ships) / "000004.jpg"
    image.write_bytes(image.read_bytes()[:-1] + b"\0")
    changed = fingerprint(read_ship_index(ships))
    assert changed["csv_sha256"] == before["csv_sha256"]
    assert changed["images_sha256"] != before["images_sha256"]
    assert data_change(before, changed) == "the content of the listed images changed"
    # A row fewer: the table's digest and the count, named with both counts (and the listed
    # images are one fewer).
    table = csv_path(ships)
    table.write_text("\n".join(table.read_text().splitlines()[:-1]) + "\n")
    fewer = fingerprint(read_ship_index(ships))
    assert data_change(changed, fewer) == (
        "train.csv changed (10 rows, now 9); the content of the listed images changed"
    )
    assert data_change(None, fewer) is None  # a run recorded without a fingerprint
