"""Fixtures shared by the tests of mpcore and the CLI: the in-process CLI, child ``mpbench``
processes, the shared small data set and cache, and the session's expensive scenarios
(tests/scenarios.py), each run once and read by every test that needs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from mpcore.face.cli import main

#: The models and data factories the tests name as ``module:factory`` specs (``check_models``,
#: ...) live in this folder, which is not a package: under ``--import-mode=importlib`` (tox) it is
#: not on ``sys.path`` by itself, so it is put there once, here.
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

# Below the sys.path line above: scenarios.py lives in this folder.
from scenarios import SCRUBBED_ENV, XDIST_ENV  # noqa: E402

#: The session's scenario fixtures (below): each is a real run of tens of seconds, so a test that
#: reads one is ``slow`` (marked here, whichever test happens to run it first).
SCENARIOS = frozenset({"quick_run", "mirrored_run", "workers_run"})


def scenario_groups(uses: list[frozenset[str]]) -> dict[str, str]:
    """Each scenario's xdist group: scenarios read together by one test share a group (joined
    transitively), since one test can only run in one worker and each scenario must run in one."""
    group = {name: frozenset({name}) for used in uses for name in used}
    for used in uses:
        joined = frozenset().union(*(group[name] for name in used))
        for name in joined:
            group[name] = joined
    return {name: "+".join(sorted(members)) for name, members in group.items()}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    uses = [SCENARIOS & frozenset(getattr(item, "fixturenames", ())) for item in items]
    groups = scenario_groups([used for used in uses if used])
    for item, used in zip(items, uses, strict=True):
        if used:
            item.add_marker(pytest.mark.slow)
            # Under ``pytest -n`` (``--dist loadgroup``) every reader of a scenario runs in the
            # worker that ran it: a session fixture is per process, and a second worker would
            # train the whole scenario again.
            item.add_marker(pytest.mark.xdist_group(groups[next(iter(used))]))


@pytest.fixture(autouse=True)
def no_xdist_env_for_inner_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in XDIST_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def invoke(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], tuple[int, str, str]]:
    """Run ``mpbench ARGV`` in-process and return (exit code, stdout, stderr); argparse errors
    arrive as ``SystemExit`` and count as their exit code."""

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session", autouse=True)
def kept_fork_servers() -> Iterator[None]:
    """The session's in-process runs share their fork servers (``fork_server_pool``): a worker
    environment imports TensorFlow once a session, not once a run. Child ``mpbench`` processes
    start their own, as a user's would."""
    from mpcore.run import launcher

    with launcher.fork_server_pool():
        yield


@pytest.fixture(scope="session")
def child_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder (``TMPDIR``) of every child ``mpbench``: a run killed with SIGKILL
    cannot remove its work folder, which then stays in pytest's own temporary tree (removed
    with it), never in the system's."""
    return tmp_path_factory.mktemp("child-tmp")


@pytest.fixture(scope="session")
def cli_env(child_tmp: Path) -> Callable[..., dict[str, str]]:
    """``cli_env(cache, **extra)``: the environment of a child ``mpbench`` with its data cache
    in ``cache``, its temporary folder in ``child_tmp``, the scrubbed variables removed and
    ``extra`` added."""

    def make(cache: Path, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
        env.update({"MPBENCH_CACHE": str(cache), "TMPDIR": str(child_tmp)})
        return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}

    return make


@pytest.fixture(scope="session")
def mpbench_process(cli_env) -> Callable[..., subprocess.CompletedProcess]:
    """``mpbench_process(*args, cwd=..., cache=None, **extra_env)``: run ``mpbench ARGS`` in a
    child process (a real TensorFlow start-up, signals and exit codes) and return its result."""

    def run(
        *args: str, cwd: Path, cache: Path | None = None, timeout: float = 300, **extra: str
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mpcore", *args],
            env=cli_env(cache or cwd, **extra),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's data cache (``MPBENCH_CACHE``): the generated ship set is made once."""
    return tmp_path_factory.mktemp("mpbench-cache")


@pytest.fixture(scope="session")
def tiny_ships(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 generated images (8 per class, 32 px, seed 0) on disk: 30 training, 10 validation.
    Shared: tests that damage or change data work on copies."""
    from mpcore.data.synthetic import write_synthetic_ships

    root = tmp_path_factory.mktemp("tiny-ships")
    return write_synthetic_ships(root, per_class=8, image_size=32, seed=0)


@pytest.fixture(scope="session")
def quick_run(tiny_ships: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's finished quick run (tests/scenarios.py): float32 and mixed_float16 ok,
    mixed_bfloat16 failed, amp_rewrite's worker killed; its data copy in ``out.parent/data``."""
    from scenarios import quick_run as run

    return run(tiny_ships, tmp_path_factory.mktemp("quick-run"), cache)


@pytest.fixture(scope="session")
def mirrored_run(cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's mirrored run over two logical CPUs with repeats and a skipped image
    (tests/scenarios.py)."""
    from scenarios import mirrored_run as run

    return run(tmp_path_factory.mktemp("mirrored-run"), cache)


@pytest.fixture(scope="session")
def workers_run(cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's two-worker run (``--workers 2``) and its baseline (tests/scenarios.py)."""
    from scenarios import workers_run as run

    return run(tmp_path_factory.mktemp("workers-run"), cache)
