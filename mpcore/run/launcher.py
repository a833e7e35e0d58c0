"""Starting and stopping training workers: one worker process, or a local cluster of them.

A lone worker (:func:`run_worker`) trains one configuration in a process of its own, because
mixed precision, XLA and GPU memory are process-global in TensorFlow. A local cluster
(:func:`launch_local_workers`, :func:`run_local_multiworker`) runs N workers on 127.0.0.1, each
with its own generated ``TF_CONFIG`` (free ports) and session (process group), and stops every
one of them on any failure, timeout or Ctrl-C. Both run the same worker,
:mod:`mpcore.run.worker`, and both are forked from the run's fork server where one fits
(:func:`fork_server`, :mod:`mpcore.run.zygote`), else started as fresh processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mpcore.names import TF_CONFIG_ENV
from mpcore.run.process import signal_name
from mpcore.run.spec import WorkerSpec
from mpcore.run.zygote import ForkedWorker, Unavailable, Zygote, enabled

WORKER_REPORT = "worker-{index}.json"
WORKER_LOG = "worker-{index}.log"
#: Seconds a lone worker gets to stop after the parent forwards SIGINT, before it is killed.
STOP_GRACE_SECONDS = 20.0

#: A started worker: a fresh process, or one forked by a fork server (which reads the same).
WorkerProcess = subprocess.Popen | ForkedWorker


class WorkerLaunchError(RuntimeError):
    """A local multi-worker run failed; every worker it started has been stopped.

    ``pids`` are the process ids of all workers started, ``log_paths`` their log files and
    ``stop_seconds`` how long stopping them took after the failure was seen.
    """

    def __init__(self, message: str, pids: Sequence[int], log_paths: Sequence[Path]) -> None:
        super().__init__(message)
        self.pids = list(pids)
        self.log_paths = list(log_paths)
        self.stop_seconds = 0.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
    return ports


def local_tf_configs(count: int, host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """One ``TF_CONFIG`` per worker of a ``count``-worker cluster on ``host`` (free ports)."""
    if count < 1:
        raise ValueError(f"worker count must be positive, got {count}")
    workers = [f"{host}:{port}" for port in free_ports(count, host)]
    return [
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        for index in range(count)
    ]


@dataclasses.dataclass(frozen=True)
class LaunchOutcome:
    """A finished local multi-worker run: the chief's result and what ran."""

    result: dict[str, Any]
    pids: list[int]
    log_paths: list[Path]
    seconds: float


def _stop_all(
    processes: Sequence[WorkerProcess], grace_seconds: float, first: int = signal.SIGTERM
) -> None:
    """Send ``first`` (SIGTERM) to every worker, SIGKILL what is left after ``grace_seconds``,
    and reap them all (so no zombie keeps a pid). A worker in its own session (a cluster
    worker) is signalled as a process group; a lone worker shares our group (Ctrl-C reaches it
    too), so it is signalled alone."""
    for sig in (first, signal.SIGKILL):
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getpgid(process.pid) == os.getpgrp():
                        process.send_signal(sig)
                    else:
                        os.killpg(process.pid, sig)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            time.sleep(0.05)
    for process in processes:
        process.wait()


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if lines:
            return lines[-1][:300]
    return ""


def _failure_message(index: int, count: int, process: WorkerProcess, log: Path) -> str:
    code = process.returncode
    how = f"was killed by {signal_name(code)}" if code < 0 else f"exited with status {code}"
    report = log.with_name(WORKER_REPORT.format(index=index))
    reason = ""
    with contextlib.suppress(OSError, ValueError):
        reason = json.loads(report.read_text()).get("reason") or ""
    detail = (
        f": {reason}" if reason else (f"; last log line: {_last_line(log)}" if code > 0 else "")
    )
    return (
        f"worker {index} of {count} (pid {process.pid}) {how}{detail}; "
        f"stopped the other worker(s) (log: {log})"
    )


def _first_cause(failed: Sequence[int], processes: Sequence[WorkerProcess]) -> int:
    """Which of the ``failed`` workers (indices), all found dead by one poll, the error names:
    one killed by a signal, else the first. A worker whose peer dies fails too, in its next
    collective (TensorFlow's ``UnavailableError``), often within one poll of the death on a
    loaded machine: naming it, as the lower index, hid the worker whose death caused it."""
    killed = [index for index in failed if (processes[index].returncode or 0) < 0]
    return (killed or list(failed))[0]


def launch_local_workers(
    count: int,
    worker: Path | Sequence[str],
    timeout: float,
    *,
    result_path: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    stop_grace_seconds: float = 5.0,
    poll_seconds: float = 0.2,
    echo_chief: bool = False,
) -> LaunchOutcome:
    """Run ``worker`` as ``count`` local workers of one cluster and return the chief's result
    (the JSON the chief, worker 0, writes to ``result_path``).

    ``worker`` is either a spec file, for the training worker (:func:`worker_command`), forked
    from the run's fork server where one fits (as a lone worker is: :func:`_start_worker`),
    else started fresh; or any command line, started fresh (the launcher's own tests run
    stand-in workers so). Each worker gets :func:`worker_env` with ``env`` and its own
    ``TF_CONFIG`` (127.0.0.1, free ports), its own session and process group (Ctrl-C in a
    terminal reaches us only), stdin from ``/dev/null``, and logs to ``log_dir/worker-N.log``
    (``echo_chief`` sends worker 0's stdout to ours instead); a failure reason a worker leaves
    in ``log_dir/worker-N.json`` is quoted in the error. When a worker fails or dies, the run
    exceeds ``timeout`` seconds, or Ctrl-C arrives, every worker is stopped (SIGTERM, then
    SIGKILL after ``stop_grace_seconds``) before :class:`WorkerLaunchError` (or
    ``KeyboardInterrupt``) is raised.
    """
    result_path, log_dir = Path(result_path), Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        result_path.unlink()  # a stale result must not pass for this run's
    if isinstance(worker, str):  # a spec's path as a str would run as a command of letters
        raise TypeError(f"worker: a spec file's Path or a command line's list, got {worker!r}")
    base_env = worker_env(env)
    processes: list[WorkerProcess] = []
    log_paths: list[Path] = []
    started = time.monotonic()
    try:
        with open(os.devnull) as devnull:
            for index, tf_config in enumerate(local_tf_configs(count)):
                log_path = log_dir / WORKER_LOG.format(index=index)
                log_paths.append(log_path)
                with open(log_path, "w") as log:
                    stdout = None if echo_chief and index == 0 else log.fileno()
                    processes.append(
                        _start_worker(
                            worker,
                            {**base_env, TF_CONFIG_ENV: json.dumps(tf_config)},
                            (devnull.fileno(), stdout, log.fileno()),
                            session=True,  # own process group; Ctrl-C reaches us only
                        )
                    )
        while True:
            failed = [i for i, process in enumerate(processes) if process.poll() not in (None, 0)]
            if failed:
                index = _first_cause(failed, processes)
                raise WorkerLaunchError(
                    _failure_message(index, count, processes[index], log_paths[index]),
                    [p.pid for p in processes],
                    log_paths,
                )
            if all(process.returncode == 0 for process in processes):
                break
            if time.monotonic() - started > timeout:
                raise WorkerLaunchError(
                    f"{count}-worker run timed out after {timeout:g} s; stopped every worker "
                    f"(logs in {log_dir})",
                    [p.pid for p in processes],
                    log_paths,
                )
            time.sleep(poll_seconds)
    except BaseException as error:
        stopping = time.monotonic()
        _stop_all(processes, stop_grace_seconds)
        if isinstance(error, WorkerLaunchError):
            error.stop_seconds = time.monotonic() - stopping
        raise
    pids = [p.pid for p in processes]
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError) as error:
        raise WorkerLaunchError(
            f"every worker exited cleanly but the chief's result {result_path} is unreadable "
            f"({type(error).__name__}); see {log_paths[0]}",
            pids,
            log_paths,
        ) from None
    return LaunchOutcome(result, pids, log_paths, time.monotonic() - started)


def worker_command(spec_path: Path) -> list[str]:
    """The command line of one training worker reading ``spec_path`` (see
    :mod:`mpcore.run.worker`): the same for a lone worker and for each worker of a cluster."""
    return [sys.executable, "-m", "mpcore.run.worker", str(spec_path)]


#: The fork servers of the :func:`fork_server` blocks, the innermost last.
_servers: list[Zygote] = []
#: Inside :func:`fork_server_pool`: the fork servers kept running for later runs (else None).
_pool: list[Zygote] | None = None
#: At most this many kept fork servers (each holds TensorFlow's imports, about 0.6 GiB).
POOL_SIZE = 2


@contextlib.contextmanager
def fork_server() -> Iterator[None]:
    """Within the block, :func:`run_worker` and :func:`launch_local_workers` fork workers, lone
    and cluster ones, from one zygote (started by the
    first of them; see :mod:`mpcore.run.zygote`), which is stopped when the block ends, or kept
    for later runs inside :func:`fork_server_pool`."""
    server = Zygote()
    _servers.append(server)
    try:
        yield
    finally:
        _servers.pop()
        if _pool is not None and server.fits(server.env):
            _pool.append(server)
            while len(_pool) > POOL_SIZE:
                _pool.pop(0).close()
        else:
            server.close()


@contextlib.contextmanager
def fork_server_pool() -> Iterator[None]:
    """Within the block, a run's fork server outlives its run and serves the workers of later
    runs whose environment it fits, so a process that starts many runs (the test suite, a
    script of experiments) imports TensorFlow once per environment rather than once per run.
    Every kept server is stopped when the block ends."""
    global _pool
    outer, _pool = _pool, []
    try:
        yield
    finally:
        kept, _pool = _pool, outer
        for server in kept:
            server.close()


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A worker's environment: ours with ``extra``, unbuffered output, TensorFlow's native
    logging quietened unless chosen. The same for a lone worker and a cluster's, so that one
    fork server fits both (:func:`mpcore.run.zygote.compatible`)."""
    env = {**os.environ, **(extra or {}), "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _start_worker(
    worker: Path | Sequence[str],
    env: dict[str, str],
    stdio: tuple[int | None, int | None, int | None],
    *,
    session: bool = False,
) -> WorkerProcess:
    """Start a worker with ``env``, and stdin, stdout and stderr the file descriptors
    ``stdio`` (None: ours), in a session of its own when ``session`` (a cluster worker).

    ``worker`` is a spec file (the training worker): inside :func:`fork_server`, forked by a
    kept fork server that fits its environment, else by the run's own, else (none can) a fresh
    process; or a command line: a fresh process. A ``subprocess.Popen`` or a
    :class:`mpcore.run.zygote.ForkedWorker`."""
    if isinstance(worker, Path) and _servers and enabled(env):
        fds = [ours if fd is None else fd for ours, fd in enumerate(stdio)]
        kept = [server for server in _pool or () if server.fits(env)]
        for server in [*kept, _servers[-1]]:
            with contextlib.suppress(Unavailable):
                return server.spawn(str(worker), env, fds, session=session)
    stdin, stdout, stderr = stdio
    return subprocess.Popen(
        worker_command(worker) if isinstance(worker, Path) else list(worker),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=session,
    )


def run_worker(spec: WorkerSpec, spec_path: Path, log_path: Path) -> int:
    """Train ``spec`` in one worker process and return its exit status.

    The worker's stdout is ours (the progress bars); its stderr (TensorFlow's native logging,
    tracebacks) goes to ``log_path``. On Ctrl-C the worker is asked to stop like Ctrl-C would,
    killed if it does not within :data:`STOP_GRACE_SECONDS`, and ``KeyboardInterrupt`` re-raised.
    Inside :func:`fork_server` the worker is forked from TensorFlow already imported.
    """
    spec.write(spec_path)
    with open(log_path, "w") as log:
        process = _start_worker(Path(spec_path), worker_env(), (None, None, log.fileno()))
        try:
            return process.wait()
        except KeyboardInterrupt:
            _stop_all([process], STOP_GRACE_SECONDS, signal.SIGINT)
            raise


def run_local_multiworker(
    spec: WorkerSpec,
    workers: int,
    timeout: float,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    echo_chief: bool = False,
) -> LaunchOutcome:
    """Train ``spec``'s configuration with ``workers`` local workers under ``multiworker``.

    ``spec.settings["batch_size"]`` is per replica. Logs, worker reports and the chief's
    ``result.json`` go to ``workdir`` (``spec``'s result path and worker folder are replaced).
    The outcome's result is the chief's record (as :func:`mpcore.run.store.finished_record`
    makes it) plus ``weights_sha256`` and ``workers`` (every worker's report); raises
    :class:`WorkerLaunchError` if a worker fails or the workers' weights differ. Inside
    :func:`fork_server` the workers are forked from TensorFlow already imported, each in a
    session of its own (``MPBENCH_FORK_SERVER=0``: fresh processes).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = dataclasses.replace(
        spec,
        config={**spec.mode, "strategy": "multiworker"},
        result_path=str(workdir / "result.json"),
        worker_dir=str(workdir),
        parent_pid=os.getpid(),
    )
    spec_path = spec.write(workdir / "spec.json")
    for index in range(workers):
        with contextlib.suppress(FileNotFoundError):
            (workdir / WORKER_REPORT.format(index=index)).unlink()
    outcome = launch_local_workers(
        workers,
        spec_path,
        timeout,
        result_path=Path(spec.result_path),
        log_dir=workdir,
        env=env,
        echo_chief=echo_chief,
    )
    reports = [
        json.loads((workdir / WORKER_REPORT.format(index=index)).read_text())
        for index in range(workers)
    ]
    checksums = {report["weights_sha256"] for report in reports}
    if len(checksums) != 1:
        raise WorkerLaunchError(
            f"the {workers} workers ended with different weights (checksums "
            f"{', '.join(sorted(c[:12] for c in checksums))}); the replicas did not stay in sync",
            outcome.pids,
            outcome.log_paths,
        )
    outcome.result["workers"] = reports
    return outcome
