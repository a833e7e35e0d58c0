"""What Linux's ``/proc`` says about a process, for the tests that start, signal and kill them."""

from __future__ import annotations

from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name (which may hold spaces and parentheses):
    the state first, then the parent's pid."""
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: present and not a zombie (a zombie still answers signal 0)."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def parent_of(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (its main thread's), none if it is gone."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
