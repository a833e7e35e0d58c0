"""A fork server for a run's workers: TensorFlow imported once per run, one fork per worker.

Every worker is a process of its own because mixed precision, XLA and the devices are
process-global in TensorFlow; but importing TensorFlow and Keras costs seconds of CPU, paid again
by every repeat and every worker of a cluster. The zygote (``python -m mpcore.run.zygote_server
FD PID``, started once per ``mpbench run``) imports TensorFlow, Keras and the worker's modules,
never runs an op nor lists a device, and forks one child per request: the child is a fresh
TensorFlow process in everything but the import, so it still chooses its logical CPUs, GPUs,
precision policy and XLA itself, and a cluster worker starts its gRPC server and TensorFlow's
coordination service (``MultiWorkerMirroredStrategy``, its ``TF_CONFIG`` read at run time) after
the fork, in the child.

Requests and replies are JSON messages on an ``AF_UNIX`` ``SOCK_SEQPACKET`` pair; a request
carries the child's stdin, stdout and stderr as file descriptors (``SCM_RIGHTS``), its
environment and working folder, and whether it starts a session of its own (a cluster worker,
as ``Popen(start_new_session=True)`` started one: ``os.setsid()`` is the child's first act). The
zygote replies with the child's pid, reaps it and relays its raw wait status, so the parent's
:class:`ForkedWorker` reads like a ``subprocess.Popen``: -9 for a worker killed by SIGKILL. The
zygote ignores SIGINT (a terminal's Ctrl-C reaches the whole foreground group, lone workers
included, which stop as before; a cluster worker, in its own session, is stopped by the
launcher), and exits, killing any child left, when the parent closes its socket or dies; a
child is killed when the zygote dies.

Variables that TensorFlow reads at import cannot change after the fork: :func:`compatible`
accepts a request only when its environment and folder are the zygote's but for the variables
read at run time (:data:`RUNTIME_ENV`, ``MPBENCH_*``); the launcher starts a fresh process
otherwise, or when the zygote cannot start or has died. ``MPBENCH_FORK_SERVER=0`` turns it off.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mpcore.names import TF_CONFIG_ENV

#: ``MPBENCH_FORK_SERVER=0`` starts every worker as a fresh process.
SWITCH_ENV = "MPBENCH_FORK_SERVER"
#: Set in a forked worker's environment, so its record says how it started: a forked worker's
#: peak RSS leaves out the library pages it never touches (they stay the zygote's).
FORKED_ENV = "MPBENCH_FORKED_WORKER"
#: Variables a worker reads at run time, which may differ between a request and the zygote
#: (besides mpbench's own ``MPBENCH_*``: planted faults, the data cache, a simulated GPU).
#: Everything else (``TF_CPP_MIN_LOG_LEVEL``, ``TF_ENABLE_ONEDNN_OPTS``, ``KERAS_BACKEND``,
#: ``CUDA_VISIBLE_DEVICES``, ``PYTHONPATH``...) may be read at import, so a difference means a
#: fresh process.
RUNTIME_ENV = frozenset({TF_CONFIG_ENV, "PYTEST_CURRENT_TEST"})
#: Seconds the parent waits for the zygote's imports before starting workers the old way.
READY_SECONDS = 180.0
#: The zygote's module (it imports the worker, which imports the launcher, which imports us).
SERVER = "mpcore.run.zygote_server"
#: What the zygote imports before it serves: what every worker imports, none of which runs an op
#: or touches a device when imported. A worker imports whatever is missing itself, after the fork.
PRELOAD = (
    "tensorflow",
    "keras",
    "mpcore.data.ships",
    "mpcore.precision.modes",
    "mpcore.probe.telemetry",
    "mpcore.run.worker",
    "mpcore.train.fit",
    "mpcore.train.replicas",
    "mpcore.user.ownmodel",
)
MESSAGE_BYTES = 1 << 20


class Unavailable(RuntimeError):
    """The zygote could not start a worker (not started, dead, or refused the request)."""


def enabled(env: Mapping[str, str]) -> bool:
    """Whether workers may be forked: not switched off, Linux (``SOCK_SEQPACKET``), and the
    TensorFlow backend (the only one whose imports were checked to leave no runtime behind)."""
    return (
        env.get(SWITCH_ENV, "1") != "0"
        and hasattr(socket, "SOCK_SEQPACKET")
        and sys.platform.startswith("linux")
        and env.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
    )


def compatible(base: Mapping[str, str], env: Mapping[str, str]) -> list[str]:
    """The variables (sorted) that differ between ``env`` and the zygote's ``base`` and may be
    read at import: empty when a child forked from the zygote behaves as a fresh process."""
    return sorted(
        name
        for name in set(base) | set(env)
        if base.get(name) != env.get(name)
        and name not in RUNTIME_ENV
        and not name.startswith("MPBENCH_")
    )


class Zygote:
    """The parent's side: the zygote process, started by the first :meth:`spawn` (with that
    request's environment and folder), given up for good once it has died. ``preload``: the
    modules it imports before serving (the tests of the process plumbing itself pass none: what
    they test is the same without TensorFlow, which costs seconds of CPU to import)."""

    def __init__(self, preload: Sequence[str] = PRELOAD) -> None:
        self.preload = tuple(preload)
        self.env: dict[str, str] = {}
        self.cwd = ""
        self.process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._statuses: dict[int, int] = {}
        self._ready = False
        self.dead = False

    def fits(self, env: Mapping[str, str]) -> bool:
        """Whether the zygote is running and a worker with ``env`` in this folder may be forked
        from it (see :func:`compatible`)."""
        running = self.process is not None and self._ready and not self.dead
        return running and self.cwd == os.getcwd() and not compatible(self.env, env)

    def start(self, env: Mapping[str, str]) -> None:
        """Start the zygote with the first request's environment and folder."""
        self.env, self.cwd = dict(env), os.getcwd()
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", SERVER, str(theirs.fileno()), str(os.getpid())]
        try:
            self.process = subprocess.Popen(
                [*command, *self.preload],
                pass_fds=[theirs.fileno()],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            theirs.close()

    def _receive(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message (None if none came within ``timeout``); statuses are kept."""
        if self.dead or self._sock is None:
            return None
        if not select.select([self._sock], [], [], timeout)[0]:
            return None
        try:
            data = self._sock.recv(MESSAGE_BYTES)
        except OSError:
            data = b""
        if not data:
            self.dead = True
            return None
        message = json.loads(data)
        if "exited" in message:
            self._statuses[message["exited"]] = message["status"]
        return message

    def status(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s wait status once the zygote relays it, waiting up to ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self._statuses and not self.dead:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._receive(left) is None and left == 0.0:
                break
        return self._statuses.pop(pid, None)

    def spawn(
        self,
        spec_path: str,
        env: Mapping[str, str],
        fds: Sequence[int],
        *,
        session: bool = False,
    ) -> ForkedWorker:
        """Fork a worker training ``spec_path`` with ``env`` and stdin/stdout/stderr ``fds``,
        in a session (and process group) of its own when ``session`` (a cluster worker, as
        ``Popen(start_new_session=True)`` would start it); raises :class:`Unavailable` when the
        zygote cannot (the caller starts a fresh one)."""
        if self.dead:
            raise Unavailable("the fork server has died")
        if self.process is None:
            try:
                self.start(env)
            except OSError as error:
                self.dead = True
                raise Unavailable(f"the fork server could not start ({error})") from None
        differs = compatible(self.env, env)
        if differs or os.getcwd() != self.cwd:
            raise Unavailable(f"the environment differs in {', '.join(differs) or 'cwd'}")
        deadline = time.monotonic() + READY_SECONDS
        while not self._ready and not self.dead and time.monotonic() < deadline:
            message = self._receive(max(0.0, deadline - time.monotonic()))
            self._ready = bool(message and message.get("ready"))
        if not self._ready:
            self.close()
            raise Unavailable("the fork server did not start")
        request = {"spec": spec_path, "env": dict(env), "cwd": os.getcwd(), "session": session}
        try:
            assert self._sock is not None
            socket.send_fds(self._sock, [json.dumps(request).encode()], list(fds))
        except OSError as error:
            raise Unavailable(f"the fork server took no request ({error})") from None
        while not self.dead:
            message = self._receive(None)
            if message and "started" in message:
                return ForkedWorker(self, message["started"])
        raise Unavailable("the fork server died")

    def close(self, grace_seconds: float = 10.0) -> None:
        """Close the socket (the zygote kills any child left and exits) and reap the zygote."""
        self.dead = True
        if self._sock is not None:
            self._sock.close()
        if self.process is None:
            return
        try:
            self.process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ForkedWorker:
    """A worker forked by the zygote, as much of ``subprocess.Popen`` as the launcher uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self._zygote = zygote
        self.pid = pid
        self.returncode: int | None = None
        self._vanished: float | None = None

    def _settle(self, timeout: float | None) -> int | None:
        status = self._zygote.status(self.pid, timeout)
        if status is not None:
            self.returncode = os.waitstatus_to_exitcode(status)
        elif self._gone():
            # The zygote died (its child is then killed) or its status was
            # lost: the worker failed, for reasons its log may tell.
            self.returncode = 1
        elif self._zygote.dead and timeout:
            time.sleep(min(timeout, 0.1))  # no status will come: look for the pid again soon
        return self.returncode

    def _gone(self) -> bool:
        """Whether the pid has been gone for a second with no status relayed for it."""
        try:
            os.kill(self.pid, 0)
            return False
        except ProcessLookupError:
            now = time.monotonic()
            self._vanished = self._vanished or now
            return now - self._vanished > 1.0 or self._zygote.dead
        except PermissionError:
            return False

    def poll(self) -> int | None:
        return self.returncode if self.returncode is not None else self._settle(0.0)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            self._settle(left)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)
