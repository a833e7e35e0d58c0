"""The fork server of the workers: a forked worker behaves as the fresh process it replaces.

One zygote serves the module; a worker that must wait is given a FIFO as its spec, so it blocks
in ``open`` (after its signal handlers are restored, before it imports TensorFlow) until the test
writes a spec or signals it. These tests, and those that start, stop or kill zygotes of their
own, test the process plumbing only: their zygotes preload nothing (``Zygote(preload=())``,
:data:`LIGHT`), since importing TensorFlow changes nothing in it and costs seconds of CPU per
zygote. The one test whose worker trains has a real zygote, TensorFlow imported before the fork.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from processes import alive, children, parent_of
from scenarios import XDIST_ENV

from mpcore.names import BASELINE
from mpcore.run import launcher
from mpcore.run.process import FAULT_ENV
from mpcore.run.spec import WorkerSpec
from mpcore.run.zygote import ForkedWorker, Unavailable, Zygote, compatible

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

#: A zygote that imports nothing before it serves: for the tests of starting, stopping and
#: killing zygotes, whose workers block on a FIFO before they would import TensorFlow.
LIGHT = partial(Zygote, preload=())


def _env(**extra: str) -> dict[str, str]:
    # Without pytest-xdist's variables: the module's zygote starts before the autouse fixture
    # (tests/conftest.py) removes them for each test, and a request differing in them is refused.
    env = {k: v for k, v in os.environ.items() if k not in XDIST_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop(FAULT_ENV, None)
    return {**env, **extra}


def _wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _blocked_on_fifo(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "wait_for_partner"
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_kept_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the session's pool (tests/conftest.py): each test decides which servers exist."""
    monkeypatch.setattr(launcher, "_pool", None)


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    """The module's zygote, preloading nothing: its workers block on a FIFO or fail before they
    would import TensorFlow (the one that trains has a real zygote of its own)."""
    server = LIGHT()
    server.start(_env())  # without a planted fault: only a request may carry one
    yield server
    server.close()
    assert server.process is not None and server.process.returncode is not None


def _spawn(
    zygote: Zygote, folder: Path, spec: Path, **extra: str
) -> tuple[ForkedWorker, Path, Path]:
    """Fork a worker of ``spec`` with stdout and stderr to files of its own in ``folder``."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        worker = zygote.spawn(str(spec), _env(**extra), [0, stdout.fileno(), stderr.fileno()])
    return worker, out, err


@pytest.fixture
def spawn(zygote: Zygote, tmp_path: Path) -> Callable[..., tuple[ForkedWorker, Path, Path]]:
    """Fork a worker of ``spec`` from the module's zygote (:func:`_spawn`)."""
    return partial(_spawn, zygote, tmp_path)


@pytest.fixture
def light_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork servers of :func:`launcher.fork_server` blocks preload nothing (:data:`LIGHT`)."""
    monkeypatch.setattr(launcher, "Zygote", LIGHT)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "spec.fifo"
    os.mkfifo(path)
    return path


def _tiny_spec(tiny_ships: Path, folder: Path) -> WorkerSpec:
    from mpcore.train.settings import TrainSettings

    settings = TrainSettings(model="small", image_size=16, batch_size=8, epochs=1, seed=3)
    return WorkerSpec(
        config={"precision": "float32", "xla": "off"},
        settings=settings.to_dict(),
        data_root=str(tiny_ships),
        result_path=str(folder / "result.json"),
        verbose=2,
        parent_pid=os.getpid(),
    )


@pytest.mark.slow
def test_a_worker_trains_with_its_stdout_ours_and_a_requests_environment_reaches_its_worker(
    tiny_ships: Path, tmp_path: Path
) -> None:
    """A real zygote (TensorFlow imported before the fork): a worker trains and exits 0, and the
    next request's environment, which alone carries a planted fault, reaches its worker."""
    server = Zygote()
    first, second = tmp_path / "first", tmp_path / "second"
    try:
        for folder in (first, second):
            folder.mkdir()
            _tiny_spec(tiny_ships, folder).write(folder / "spec.json")
        worker, out, err = _spawn(server, first, first / "spec.json")
        assert server.process is not None
        # What the fork server is for: TensorFlow's libraries are loaded before any fork.
        assert "libtensorflow" in Path(f"/proc/{server.process.pid}/maps").read_text()
        assert worker.wait(timeout=120) == 0, err.read_text()
        assert worker.returncode == worker.poll() == 0
        # The zygote started without the planted fault: only the request carries it.
        faulty, _out, faulty_err = _spawn(
            server, second, second / "spec.json", **{FAULT_ENV: f"{BASELINE}=error"}
        )
        assert faulty.wait(timeout=120) == 1
    finally:
        server.close()
    assert f"[{BASELINE}] " in out.read_text()  # the progress line, prefixed
    assert json.loads((first / "result.json").read_text())["status"] == "ok"
    assert f"RuntimeError: injected fault ({FAULT_ENV})" in faulty_err.read_text()
    record = json.loads((second / "result.json").read_text())
    assert record["reason"] == f"RuntimeError: injected fault ({FAULT_ENV})"


def test_a_failing_worker_exits_1_with_its_traceback_in_its_stderr(spawn, tmp_path: Path) -> None:
    worker, out, err = spawn(tmp_path / "no-such-spec.json")
    assert worker.wait(timeout=60) == 1
    assert "FileNotFoundError" in err.read_text() and "Traceback" in err.read_text()
    assert out.read_text() == ""


def test_a_worker_killed_by_sigkill_reads_minus_9(spawn, fifo: Path, tmp_path: Path) -> None:
    worker, _out, _err = spawn(fifo)
    _wait_until(lambda: _blocked_on_fifo(worker.pid), 30, "the worker never opened its spec")
    assert worker.poll() is None and worker.returncode is None
    assert Path(f"/proc/{worker.pid}/cwd").resolve() == Path.cwd().resolve()
    with pytest.raises(subprocess.TimeoutExpired):
        worker.wait(timeout=0.2)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(timeout=30) == -signal.SIGKILL


def test_sigint_stops_the_worker_and_spares_the_zygote(zygote: Zygote, spawn, fifo: Path) -> None:
    # A terminal's Ctrl-C reaches the whole foreground group: here the zygote and the worker.
    worker, _out, _err = spawn(fifo)
    _wait_until(lambda: _blocked_on_fifo(worker.pid), 30, "the worker never opened its spec")
    assert zygote.process is not None
    for pid in (zygote.process.pid, worker.pid):
        os.kill(pid, signal.SIGINT)
    # Interrupted before its spec was read, as a fresh interpreter is: killed by SIGINT.
    assert worker.wait(timeout=30) == -signal.SIGINT
    time.sleep(0.2)
    assert zygote.process.poll() is None and not zygote.dead
    again, _out, _err = spawn(fifo)  # and it still serves
    _wait_until(lambda: _blocked_on_fifo(again.pid), 30, "no worker after the SIGINT")
    again.send_signal(signal.SIGKILL)
    assert again.wait(timeout=30) == -signal.SIGKILL


def test_a_difference_in_an_import_time_variable_starts_a_fresh_process(
    zygote: Zygote, fifo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _env()
    assert compatible(base, {**base, "TF_CONFIG": "{}", FAULT_ENV: "x=crash"}) == []
    flipped = "1" if base.get("TF_ENABLE_ONEDNN_OPTS") == "0" else "0"
    onednn = {**base, "TF_ENABLE_ONEDNN_OPTS": flipped}
    assert compatible(base, onednn) == ["TF_ENABLE_ONEDNN_OPTS"]
    with open(tmp_path / "log", "w") as log:
        with pytest.raises(Unavailable, match="TF_ENABLE_ONEDNN_OPTS"):
            zygote.spawn(str(fifo), onednn, [0, 1, log.fileno()])
        monkeypatch.setattr(launcher, "_servers", [zygote])
        process = launcher._start_worker(fifo, onednn, (None, None, log.fileno()))
    try:
        assert isinstance(process, subprocess.Popen)
        assert process.args == launcher.worker_command(fifo)
    finally:
        process.kill()
        process.wait()


def test_a_dead_zygote_is_given_up_for_fresh_processes(fifo: Path, tmp_path: Path) -> None:
    server = Zygote()
    server.close()  # never started: nothing to stop
    with open(tmp_path / "log", "w") as log, pytest.raises(Unavailable, match="died"):
        server.spawn(str(fifo), _env(), [0, 1, log.fileno()])


def test_the_fork_server_block_stops_the_zygote_and_its_workers(
    light_runs: None, fifo: Path, tmp_path: Path
) -> None:
    with open(tmp_path / "log", "w") as log, launcher.fork_server():
        server = launcher._servers[-1]
        worker = server.spawn(str(fifo), _env(), [0, 1, log.fileno()])
        _wait_until(lambda: _blocked_on_fifo(worker.pid), 60, "the worker never started")
    assert not launcher._servers
    assert server.process is not None and server.process.returncode == 0
    _wait_until(lambda: not alive(worker.pid), 10, "a worker outlived its zygote")


def test_a_pool_keeps_a_runs_fork_server_for_later_runs_and_stops_it_at_its_end(
    light_runs: None, fifo: Path, tmp_path: Path
) -> None:
    with launcher.fork_server_pool(), open(tmp_path / "log", "w") as log:
        workers, servers = [], []
        for _run in range(2):
            with launcher.fork_server():
                worker = launcher._start_worker(fifo, _env(), (None, None, log.fileno()))
                _wait_until(lambda w=worker: _blocked_on_fifo(w.pid), 60, "no worker started")
                workers.append(worker)
                servers.append(launcher._servers[-1])
                worker.send_signal(signal.SIGKILL)
                assert worker.wait(timeout=30) == -signal.SIGKILL
        first, second = servers
        # The second run's worker came from the first run's server; its own never started.
        assert first.process is not None and second.process is None
        assert first.process.poll() is None, "the kept server was stopped with its run"
        # A worker whose environment the kept server does not fit gets the run's own.
        flipped = "1" if _env().get("TF_ENABLE_ONEDNN_OPTS") == "0" else "0"
        with launcher.fork_server():
            other = launcher._start_worker(
                fifo, _env(TF_ENABLE_ONEDNN_OPTS=flipped), (None, None, log.fileno())
            )
            own = launcher._servers[-1]
            assert own.process is not None and own.process is not first.process
            _wait_until(lambda: _blocked_on_fifo(other.pid), 60, "no worker started")
            assert parent_of(other.pid) == own.process.pid
            other.send_signal(signal.SIGKILL)
            other.wait(timeout=30)
    assert first.process.returncode == 0 and own.process.returncode == 0
    assert launcher._pool is None


def test_cluster_workers_are_forked_each_in_a_session_of_its_own(
    light_runs: None, fifo: Path, tmp_path: Path
) -> None:
    """A local cluster inside a run's fork server (``launch_local_workers`` given a spec file):
    each worker is the zygote's child, leads a session and process group of its own (as
    ``start_new_session=True`` made a fresh one: a terminal's Ctrl-C reaches the launcher only),
    reads ``/dev/null`` and logs to its own file; one killed by SIGKILL reads -9, and the other
    is stopped through its group at once."""
    seen: dict[int, dict[str, object]] = {}
    logs = tmp_path / "logs"

    def inspect_then_kill(server: Zygote) -> None:
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while time.monotonic() < deadline:
            if server.process is not None:
                pids = children(server.process.pid)
                if len(pids) == 2 and all(_blocked_on_fifo(pid) for pid in pids):
                    break
            time.sleep(0.05)
        for pid in pids:
            seen[pid] = {
                "parent": parent_of(pid),
                "zygote": server.process.pid if server.process else None,
                "sid": os.getsid(pid),
                "pgid": os.getpgid(pid),
                "stdin": os.readlink(f"/proc/{pid}/fd/0"),
                "stderr": os.readlink(f"/proc/{pid}/fd/2"),
            }
        for pid, found in seen.items():
            if found["stderr"] == str(logs / "worker-1.log"):
                os.kill(pid, signal.SIGKILL)

    with launcher.fork_server():
        watcher = threading.Thread(target=inspect_then_kill, args=(launcher._servers[-1],))
        watcher.start()
        try:
            with pytest.raises(launcher.WorkerLaunchError) as caught:
                launcher.launch_local_workers(
                    2, fifo, 60.0, result_path=tmp_path / "result.json", log_dir=logs
                )
        finally:
            watcher.join()
    assert sorted(seen) == sorted(caught.value.pids), "the workers are not the zygote's children"
    for pid, found in seen.items():
        assert found["parent"] == found["zygote"], found
        assert found["sid"] == found["pgid"] == pid, found
        assert found["stdin"] == os.devnull, found
    assert sorted(found["stderr"] for found in seen.values()) == [
        str(logs / "worker-0.log"),
        str(logs / "worker-1.log"),
    ]
    message = str(caught.value)
    assert "worker 1 of 2" in message and "was killed by SIGKILL" in message, message
    # Worker 0, blocked in open(), ends at the SIGTERM to its group, not after the 5 s grace.
    assert caught.value.stop_seconds < 2.5, caught.value.stop_seconds
    for pid in seen:
        assert not alive(pid)


def test_a_worker_whose_zygote_dies_fails_and_later_workers_start_fresh(
    fifo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LIGHT()
    try:
        with open(tmp_path / "log", "w") as log:
            worker = server.spawn(str(fifo), _env(), [0, 1, log.fileno()])
            _wait_until(lambda: _blocked_on_fifo(worker.pid), 60, "the worker never started")
            assert server.process is not None
            server.process.kill()
            assert worker.wait(timeout=30) == 1  # killed with its zygote, unrelayed
            assert server.dead and not alive(worker.pid)
            monkeypatch.setattr(launcher, "_servers", [server])
            process = launcher._start_worker(fifo, _env(), (None, None, log.fileno()))
            assert isinstance(process, subprocess.Popen)
            process.kill()
            process.wait()
    finally:
        server.close()


PARENT = """
import os, sys, time
from mpcore.run.zygote import Zygote
server = Zygote(preload=())
env = {**os.environ, "PYTHONUNBUFFERED": "1"}
worker = server.spawn(sys.argv[1], env, [0, 1, 2], session=sys.argv[2] == "session")
print(server.process.pid, worker.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("session", ["lone", "session"])
def test_the_zygote_and_its_workers_stop_when_the_parent_is_killed(
    session: str, fifo: Path, tmp_path: Path
) -> None:
    """``mpbench run`` SIGKILLed: its zygote stops, and the workers with it, a cluster's worker
    in its own session included (its parent is still the zygote)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT), str(fifo), session],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert parent.stdout is not None
        zygote_pid, worker_pid = (int(pid) for pid in parent.stdout.readline().split())
        assert alive(zygote_pid) and alive(worker_pid)
        if session == "session":
            _wait_until(lambda: _blocked_on_fifo(worker_pid), 30, "the worker never started")
            assert os.getsid(worker_pid) == worker_pid
    finally:
        parent.kill()
        parent.wait()
    _wait_until(lambda: not alive(zygote_pid), 15, "the zygote outlived its parent")
    _wait_until(lambda: not alive(worker_pid), 15, "a worker outlived its parent")


def _group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.mark.slow
def test_ctrl_c_to_the_whole_group_stops_the_run_and_leaves_no_process(
    tmp_path: Path, cache: Path, cli_env
) -> None:
    """A terminal's Ctrl-C: SIGINT to ``mpbench run``'s whole process group (the run, its
    zygote, the forked worker) while the second configuration trains."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "mpcore", "run", "--profile", "quick", "--data", "synthetic"]
    argv += ["--precision", "float32", "mixed_float16", "--epochs", "2", "--image-size", "32"]
    # 30 images: the first configuration only has to finish; the second is stopped a second
    # after it starts, long before its start-up and first trace are done.
    argv += ["--repeats", "1", "--synthetic-per-class", "6", "--batch-size", "8"]
    process = subprocess.Popen(
        [*argv, "--out", str(out)],
        env=cli_env(cache),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, as a terminal's foreground job
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "[2/2] mixed_float16+xla_off: training" in line:
                break
        else:
            raise AssertionError("the run ended before its second configuration")
        time.sleep(1.0)  # the forked worker is training
        members = _group_members(process.pid)
        assert len(members) >= 3, members  # the run, the zygote, the worker
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr
    assert "interrupted during mixed_float16+xla_off" in stdout
    document = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in document["configurations"]] == ["float32+xla_off"]
    _wait_until(lambda: not _group_members(process.pid), 10, "a process of the run was left")
