"""The run folder's lock: one ``mpbench run`` at a time per ``--out`` folder.

Two runs writing one ``results.json`` would each overwrite the other's records. The lock is an
``fcntl.flock`` on ``OUT/.mpbench.lock``, a file holding the holder's pid. The kernel drops a
flock when its holder dies, even by SIGKILL, so a dead holder's file is taken over at once (with
a message naming it); a live holder's pid is named in the refusal. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

LOCK_FILE = ".mpbench.lock"


class LockedError(Exception):
    """Another live process holds the run folder's lock; one line for the user."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def _holder(path: Path, wait: float = 1.0) -> str:
    """The pid written in the lock file (the holder may be a moment away from writing it)."""
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError):
            text = path.read_text().strip()
            if text:
                return text
        if time.monotonic() > deadline:
            return "unknown"
        time.sleep(0.05)


def _flock_soon(descriptor: int, tries: int = 5, pause: float = 0.05) -> bool:
    """Take the exclusive lock, allowing for :func:`check_unlocked`'s momentary shared one."""
    for attempt in range(tries):
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(pause)
    return False


def check_unlocked(folder: Path) -> None:
    """Raise :class:`LockedError` if a live run holds ``folder``'s lock (checked before the
    folder's other contents, so that a run in progress is named as such); creates nothing."""
    probe = RunLock(folder)
    try:
        descriptor = os.open(probe.path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockedError(probe.refusal()) from None
    finally:
        os.close(descriptor)


class RunLock:
    """``with RunLock(out, announce):`` holds ``out``'s lock or raises :class:`LockedError`."""

    def __init__(self, folder: Path, announce: Callable[[str], None] = print) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.announce = announce
        self.descriptor: int | None = None

    def acquire(self) -> None:
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _flock_soon(descriptor):
                os.close(descriptor)
                raise LockedError(self.refusal())
            # The holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a file no one else can see, so try again.
            try:
                same = os.fstat(descriptor).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(descriptor)
        stale = os.read(descriptor, 64).decode(errors="replace").strip()
        if stale and stale != str(os.getpid()):
            alive = stale.isdigit() and _pid_alive(int(stale))
            self.announce(
                f"lock: taking over the stale lock of pid {stale} "
                f"({'its lock was released' if alive else 'no longer running'})"
            )
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self.descriptor = descriptor

    def refusal(self) -> str:
        return (
            f"--out {self.path.parent} is in use by another mpbench run "
            f"(pid {_holder(self.path)}, lock {self.path}); wait for it to finish "
            "or choose another folder"
        )

    def release(self) -> None:
        if self.descriptor is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: see the inode check in acquire()
        os.close(self.descriptor)
        self.descriptor = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
