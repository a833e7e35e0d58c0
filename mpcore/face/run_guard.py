"""``mpbench run``'s guards around the run folder and the data: the lock, the cleanup of what
a failed start made, and the checks a resumed run must pass before it trains.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mpcore.face.common import UsageError


@contextlib.contextmanager
def removed_on_failure(folder: Path) -> Iterator[None]:
    """Remove ``folder`` if the block fails and the folder did not exist before it: a failure
    leaves no empty or half-written cache folder behind."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def refuse_if_locked(out: Path) -> None:
    """One line naming the live run that holds ``out``, before anything else is said of it."""
    from mpcore.run.lock import LockedError, check_unlocked

    try:
        check_unlocked(out)
    except LockedError as error:
        raise UsageError(str(error)) from None


@contextlib.contextmanager
def locked_out(out: Path, resume: bool, created: bool) -> Iterator[None]:
    """Hold ``out``'s run lock (:mod:`mpcore.run.lock`) for the block; a second run on the
    folder is refused naming the holder. A run that fails before writing anything leaves no
    empty folder it made."""
    from mpcore.run.lock import LockedError, RunLock
    from mpcore.run.schema import RESULTS_FILE

    lock = RunLock(out, announce=lambda line: print(line, flush=True))
    try:
        lock.acquire()
    except LockedError as error:
        raise UsageError(str(error)) from None
    try:
        # A run that held the lock a moment ago may have written its results since we checked.
        if (out / RESULTS_FILE).is_file() and not resume:
            raise UsageError(f"--out {out} was taken by another run ({RESULTS_FILE}) meanwhile")
        yield
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: nothing was written


def check_resumed(
    document: dict[str, Any], data: dict[str, Any], planned: list[str], out: Path
) -> None:
    """Refuse to resume on a data set whose content changed; say which finished
    configurations outside this plan are kept."""
    from mpcore.run.schema import RESULTS_FILE
    from mpcore.run.store import data_change

    change = data_change(document["data"].get("fingerprint"), data["fingerprint"])
    if change:
        raise UsageError(
            f"cannot resume {out / RESULTS_FILE}: the data set changed since the run began: "
            f"{change}; use the same data or a new --out folder"
        )
    kept = [r["name"] for r in document["configurations"] if r["name"] not in planned]
    if kept:
        print(f"resuming: keeping {', '.join(kept)} (not in this plan) as recorded", flush=True)
