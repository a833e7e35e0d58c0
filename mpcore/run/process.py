"""Process plumbing shared by the run launcher and its workers: exit codes, signals, faults.

One place for what both sides of a process boundary must agree on: the exit status of an
interrupted worker, how a signal is named in a failure reason, how a worker notices that the
process that started it has died, and how the fault-injection variables used by the tests of
the harness itself are parsed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import NoReturn

#: Exit status of a worker (and of ``mpbench run``) stopped by Ctrl-C, as a shell reports SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status of ``mpbench run`` stopped by SIGTERM (128 + 15, as a shell reports it).
EXIT_TERMINATED = 143

#: ``MPBENCH_FAULT="NAME=KIND[,NAME=KIND]"`` makes the worker of configuration NAME fail: KIND
#: ``error`` (an exception), ``oom`` (TensorFlow's ``ResourceExhaustedError``) or ``crash`` (the
#: worker kills itself) just before training, ``nan`` (every weight set to NaN before step 2), or
#: ``kill@R`` (the worker of repeat R, counted from 1, SIGKILLs itself after its first step, as
#: the kernel's OOM killer would; the warm-up and the other repeats train normally).
FAULT_ENV = "MPBENCH_FAULT"
#: ``MPBENCH_WORKER_FAULT="INDEX=KIND"``: worker INDEX of a local multi-worker cluster kills
#: itself (``crash``) or raises (``error``) after its first training step.
WORKER_FAULT_ENV = "MPBENCH_WORKER_FAULT"


def signal_name(code: int) -> str:
    """``SIGKILL`` for a return code of -9: how a subprocess's death by a signal is reported."""
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def planted_fault(variable: str, target: str) -> str:
    """The fault kind the environment ``variable`` plants on ``target`` ('' for none)."""
    for item in filter(None, os.environ.get(variable, "").split(",")):
        name, _, kind = item.partition("=")
        if name.strip() == target:
            return kind.strip()
    return ""


def exit_with_parent(parent_pid: int | None, poll_seconds: float = 1.0) -> None:
    """Stop this process if ``parent_pid`` (the process that started it) dies, even by SIGKILL,
    instead of training on as an orphan or waiting on peers forever."""
    if not parent_pid:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="mpbench-parent-watch", daemon=True).start()


def exit_now(code: int) -> NoReturn:
    """End a command-line process with ``code`` as the interpreter's exit would, less its teardown.

    Once TensorFlow has run ops, the interpreter's teardown (freeing every module, TensorFlow's
    static objects) takes 1.0-1.5 s and about 0.9 CPU-second on a small CPU and checks nothing;
    a test suite that starts a dozen ``mpbench`` commands and cluster workers pays it a dozen
    times. What the teardown does that matters is kept, in its order: threading's own shutdown
    (its exit hooks, which stop ``concurrent.futures``' idle pool threads, then a wait for the
    threads that are not daemons), the ``atexit`` functions (logging's flush, TensorFlow's and
    absl's own), stdout and stderr flushed. For the ``__main__`` of a process only (it must run
    in the main thread), never a library call.
    """
    # threading._shutdown is what the interpreter's exit calls first (Py_FinalizeEx): joining
    # the threads by hand would skip its hooks, and an executor left open would wait forever.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    end_process(code)


def end_process(code: int) -> NoReturn:
    """The last of :func:`exit_now`, without its wait for threads (a forked worker, which leaves
    from its fork's one thread, and a test probe end here): the ``atexit`` functions, stdout and
    stderr flushed, then ``os._exit(code)``; a negative ``code`` ends the process killed by that
    signal, as a fresh interpreter ends on an uncaught ``KeyboardInterrupt`` (-2)."""
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's ``KeyboardInterrupt`` would be, so that a terminated run
    stops its workers, keeps its finished configurations and removes its temporary folders the
    same way; ``mpbench run`` then exits with :data:`EXIT_TERMINATED`."""


_received: set[int] = set()


def terminated() -> bool:
    """Whether a SIGTERM arrived in the latest :func:`sigterm_as_interrupt` block (a run that
    caught its :class:`Terminated` as an interrupt exits with 143, not 130)."""
    return signal.SIGTERM in _received


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM raises :class:`Terminated` in the main thread (later
    ones are ignored while it unwinds); the previous handler is restored after."""

    def handler(_signum: int, _frame: object) -> None:
        _received.add(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
