"""The fork server's own process: ``python -m mpcore.run.zygote_server FD PARENT_PID MODULE...``.

It imports the MODULEs once (TensorFlow, Keras and the worker's modules: ``zygote.PRELOAD``),
then forks a worker per request that arrives on the socket ``FD`` (see :mod:`mpcore.run.zygote`
for the parent's side and why), until ``mpbench run`` (``PARENT_PID``) closes the socket or dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from mpcore.run.process import end_process
from mpcore.run.zygote import FORKED_ENV, MESSAGE_BYTES

#: ``prctl``'s option: the signal this process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """SIGKILL this process as soon as ``parent`` (the zygote) dies, whatever it is doing (the
    worker's own parent watch starts only once its spec is read)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _child(request: dict[str, Any], fds: list[int], closing: Sequence[int], parent: int) -> None:
    """In the forked child: become the requested worker, as a fresh process would be, and exit
    with its status (never returns)."""
    code = 1
    try:
        if request.get("session"):
            # First: until then the child is in the zygote's group (the launcher's), where a
            # Ctrl-C or a signal to that group would reach it; the launcher signals a cluster
            # worker's own group.
            os.setsid()
        _die_with(parent)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd in closing:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[FORKED_ENV] = "1"
        sys.argv = [sys.argv[0], request["spec"]]
        from mpcore.run.worker import worker_main

        code = worker_main(request["spec"], parent_pid=parent)
    except KeyboardInterrupt:  # uncaught, as a fresh interpreter reports it: killed by SIGINT
        code = -signal.SIGINT
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        end_process(code)


def serve(sock: socket.socket, parent_pid: int) -> None:
    """Fork a child per request until the parent closes the socket or dies; relay each child's
    wait status; kill the children left when leaving."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    children: set[int] = set()
    zygote = os.getpid()
    try:
        sock.send(json.dumps({"ready": True}).encode())
        while os.getppid() == parent_pid:
            readable = select.select([sock, wake_read], [], [], 1.0)[0]
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if not pid:
                    break
                children.discard(pid)
                sock.send(json.dumps({"exited": pid, "status": status}).encode())
            if sock in readable:
                data, fds, _flags, _address = socket.recv_fds(sock, MESSAGE_BYTES, 3)
                if not data:
                    return
                pid = os.fork()
                if pid == 0:
                    closing = [sock.fileno(), wake_read, wake_write]
                    _child(json.loads(data), fds, closing, zygote)
                for fd in fds:
                    os.close(fd)
                children.add(pid)
                sock.send(json.dumps({"started": pid}).encode())
    except OSError:  # the parent is gone
        return
    finally:
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def main(argv: Sequence[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the workers, not their zygote
    sock = socket.socket(fileno=int(argv[0]))
    for module in argv[2:]:
        importlib.import_module(module)
    gc.freeze()  # the imported objects stay shared with the children, untouched by their GC
    serve(sock, int(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
