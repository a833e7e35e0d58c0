"""Writing and reading the run's files so that a reader never sees a partial one.

Every write goes to a temporary file in the same folder, is fsynced, then renamed over, and the
folder is fsynced so the new name survives a power cut; saving the results retries and falls
back to a named file rather than lose a finished run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mpcore.run.schema import SCHEMA_PREFIX, ShapeError, check_results, finite_or_null


class RunSetupError(Exception):
    """The run cannot start as asked (bad ``--out``, unresumable folder); one line for the user."""


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so it is never changed)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial
    one: write a temporary file in the same folder, fsync it, rename over, then fsync the folder;
    on any error the temporary file is removed and the old file is left as it was. The file is
    readable as the umask allows, like any other new file (``mkstemp`` alone makes it 0600,
    unreadable to the rest of a team sharing the folder)."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_folder(path.parent)


def write_json_atomic(path: Path, document: Any) -> None:
    """:func:`write_text_atomic` of ``document`` as indented JSON (serialised before the file is
    touched, so an unserialisable document leaves nothing behind)."""
    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=True) + "\n")


def checked_results(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` as a results.json holds it: every number that is not finite as
    null, checked against the schema the reader uses (:class:`ShapeError` names the first key
    that breaks it), so no file is written that ``mpbench report`` would refuse."""
    document = finite_or_null(document)
    check_results(document)
    return document


def write_results(path: Path, document: dict[str, Any]) -> None:
    """:func:`write_json_atomic` of :func:`checked_results`."""
    write_json_atomic(path, checked_results(document))


def read_results(path: Path) -> dict[str, Any]:
    """Load a ``results.json``; raise :class:`RunSetupError` if it is not one."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise RunSetupError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise RunSetupError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(document, dict) or not str(document.get("schema")).startswith(SCHEMA_PREFIX):
        raise RunSetupError(f"{path} is not an mpbench results file (no schema {SCHEMA_PREFIX}N)")
    try:
        check_results(document)
    except ShapeError as error:
        raise RunSetupError(f"{path}: {error}") from None
    return document


def check_writable_folder(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".mpbench-write-test"):
            pass
    except OSError as error:
        raise RunSetupError(
            f"--out {out} is not a writable folder: {error.strerror or error}"
        ) from None


#: Tries and the pause between them before a results.json that cannot be written is given up.
SAVE_ATTEMPTS, SAVE_PAUSE_SECONDS = 3, 1.0


class ResultsUnsavable(Exception):
    """``results.json`` could not be written after every try; the document went to a fallback
    file the message names."""


def fallback_path(path: Path) -> Path:
    """Where a run's results go when its folder refuses them: the temporary folder, named by
    the run folder and this process."""
    stem = "".join(c if c.isalnum() else "-" for c in str(Path(path).parent.resolve()))[-60:]
    return Path(tempfile.gettempdir()) / f"mpbench-rescued{stem}-{os.getpid()}.json"


def save_results(
    path: Path,
    document: dict[str, Any],
    announce: Any = print,
    attempts: int | None = None,
    pause: float | None = None,
) -> None:
    """:func:`write_json_atomic` of ``document`` to ``path``, tried again on an ``OSError`` (a
    full disk, a folder made read-only); on giving up the document is written to
    :func:`fallback_path` and :class:`ResultsUnsavable` says where. ``document`` itself (the
    records in memory) is never changed."""
    import time

    attempts = attempts or SAVE_ATTEMPTS
    pause = SAVE_PAUSE_SECONDS if pause is None else pause
    try:
        checked = checked_results(document)
    except ShapeError as error:  # a bug of mpbench's: keep the run, say where it went
        rescue = fallback_path(path)
        write_json_atomic(rescue, document)
        raise ResultsUnsavable(
            f"not writing {path}: {error}; the run so far is saved in {rescue}"
        ) from None
    for attempt in range(1, attempts + 1):
        try:
            write_json_atomic(path, checked)
            return
        except OSError as error:
            problem = error.strerror or str(error)
            if attempt < attempts:
                announce(f"cannot write {path} ({problem}); trying again in {pause:g} s")
                time.sleep(pause)
    rescue = fallback_path(path)
    try:
        write_json_atomic(rescue, document)
        where = f"the run so far is saved in {rescue}"
    except OSError as error:
        where = f"nor to {rescue} ({error.strerror or error})"
    raise ResultsUnsavable(f"cannot write {path} ({problem}) after {attempts} tries; {where}")
